"""The `iwdctl` command line: parse, call the core, print. Errors become one line and exit code 2."""

from __future__ import annotations

import gc
import inspect
import os
import sys
import traceback
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, Optional

import typer
from rich.table import Table

from iwdctl.console import console, error_console, progress_bar
from iwdctl.errors import IwdctlError
from iwdctl.files import write_json_atomic
from iwdctl.runtime import resolve_device, seed_everything

if TYPE_CHECKING:  # imported by the commands that need it: `measure` on a CPU runs without torch
    import torch

app = typer.Typer(
    name="iwdctl",
    help="Internal Wasserstein distance (IWD) for adversarial attack and defense.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ModelOption = Annotated[str, typer.Option("--model", "-m", help="Registry name or .safetensors checkpoint.")]
WeightsOption = Annotated[Optional[str], typer.Option(help="ImageNet weights file for torchvision models.")]
DeviceOption = Annotated[Optional[str], typer.Option(help="cpu, cuda or cuda:N (default: CUDA when present).")]
SeedOption = Annotated[int, typer.Option(help="Fixes every random choice.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
BatchSizeOption = Annotated[
    Optional[int], typer.Option(help="Images per batch on the device (default: 16 on a CPU, 128 on a GPU).")
]
WorkersOption = Annotated[
    Optional[int], typer.Option(help="Processes that decode and resize images ahead (default: up to 4).")
]


def _pipeline_sizes(batch_size: int | None, workers: int | None, device: torch.device) -> tuple[int, int]:
    """--batch-size and --workers, checked, with defaults that suit the device."""
    from iwdctl.budgets import require_at_least
    from iwdctl.data import default_workers

    require_at_least(batch_size, 1, "--batch-size")
    require_at_least(workers, 0, "--workers")
    default_batch = 128 if device.type == "cuda" else 16
    return batch_size or default_batch, default_workers() if workers is None else workers


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    """Internal Wasserstein distance (IWD) for adversarial attack and defense."""


def _fraction(value: float) -> str:
    return f"{100 * value:.2f}%"


@app.command("eval")
def eval_command(
    model: ModelOption = "efficientnet_lite0",
    data: Annotated[Optional[list[Path]], typer.Option(help="Images: class folders, a CSV's folder, or files.")] = None,
    labels: Annotated[Optional[Path], typer.Option(help="CSV of file + label (and target).")] = None,
    one_based: Annotated[
        Optional[bool],
        typer.Option("--one-based/--zero-based", help="CSV labels count from 1 (default: 1 for NIPS17's TrueLabel)."),
    ] = None,
    limit: Annotated[Optional[int], typer.Option(help="Use the first N images.")] = None,
    batch_size: BatchSizeOption = None,
    workers: WorkersOption = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write results as JSON.")] = None,
    attack: Annotated[
        Optional[str],
        typer.Option(help="Robust accuracy under attacks, e.g. pgd10,fgsm,pgd20 (registry names; pgdN: N steps)."),
    ] = None,
    eps: Annotated[str, typer.Option(help="Budget of the attacks that take one, e.g. 8/255 or 0.03.")] = "8/255",
    restarts: Annotated[
        int, typer.Option(min=1, help="Robust only if an image survives this many seeded runs of each attack.")
    ] = 1,
    generator: Annotated[
        Optional[Path], typer.Option(help="IWDD checkpoint whose generator --attack iwda-amortised uses.")
    ] = None,
    adv: Annotated[
        Optional[Path], typer.Option(help="Transfer: success rate of a folder written by `iwdctl attack`.")
    ] = None,
    weights: WeightsOption = None,
    device: DeviceOption = None,
    seed: SeedOption = 0,
    quiet: QuietOption = False,
) -> None:
    """Clean top-1 / top-5 accuracy, robust accuracy under --attack, or transfer success of --adv.

    With no --data and no --adv: the top-5 classes of the embedded default image.
    """
    from iwdctl.attacks import parse_spec
    from iwdctl.budgets import parse_budget, require_at_least
    from iwdctl.evaluate import clean_accuracy, labelled_samples, predict, robust_accuracy
    from iwdctl.images import default_image_path
    from iwdctl.models import load_classifier

    require_at_least(limit, 1, "--limit")
    budget = parse_budget(eps)
    attack_names = [name.strip() for name in attack.split(",") if name.strip()] if attack else []
    for name in attack_names:
        parse_spec(name)  # reject unknown names before any work
    target = resolve_device(device)
    batch_size, workers = _pipeline_sizes(batch_size, workers, target)
    seed_everything(seed)
    classifier = load_classifier(model, device=target, weights=weights)
    if adv is not None:
        from iwdctl.evaluate import transfer_success

        with progress_bar(quiet, unit="images") as progress:
            transfer = transfer_success(classifier, adv, model, batch_size, workers, progress)
        table = Table(title=f"transfer of {adv} to {model}")
        for column in ("outputs", "success on source model", f"success on {model}"):
            table.add_column(column, justify="right")
        table.add_row(str(transfer.n), _fraction(transfer.source_success_rate), _fraction(transfer.success_rate))
        console.print(table)
        if json_path:
            from dataclasses import asdict

            write_json_atomic(json_path, asdict(transfer))
        return
    if not data:
        from iwdctl.data import Sample

        path = default_image_path()
        (prediction,) = predict(classifier, [Sample(path, path.stem)])
        table = Table(title=f"{model} on {path.name}")
        table.add_column("rank")
        table.add_column("class")
        table.add_column("probability", justify="right")
        for rank, (index, probability) in enumerate(zip(prediction.top5, prediction.probabilities), start=1):
            table.add_row(str(rank), f"{classifier.class_names[index]} ({index})", f"{probability:.3f}")
        console.print(table)
        if json_path:
            write_json_atomic(
                json_path,
                {
                    "model": model,
                    "image": str(path),
                    "top5": [
                        {"class": classifier.class_names[i], "index": i, "probability": p}
                        for i, p in zip(prediction.top5, prediction.probabilities)
                    ],
                },
            )
        return
    samples = labelled_samples(classifier, data, str(labels) if labels else None, one_based, limit)
    if len(samples) > 1:
        classifier = classifier.batch_invariant()
    with progress_bar(quiet, unit="images") as progress:
        result = clean_accuracy(classifier, samples, batch_size, progress, model, ", ".join(map(str, data)), workers)
        for name in attack_names:
            result.robust[name] = robust_accuracy(
                classifier, samples, name, budget, seed, batch_size, progress, workers, restarts, generator=generator
            )
    table = Table(title=f"{model}: {result.n} images" + (f", eps {eps}" if attack_names else ""))
    columns = ["model", "images", "top-1", "top-5", *attack_names, "seconds"]
    for column in columns:
        table.add_column(column, justify="right" if column != "model" else "left")
    robust_cells = [_fraction(result.robust[name]) for name in attack_names]
    table.add_row(
        model, str(result.n), _fraction(result.top1), _fraction(result.top5), *robust_cells, f"{result.seconds:.1f}"
    )
    console.print(table)
    if json_path:
        write_json_atomic(json_path, result.to_dict())


@app.command("measure")
def measure_command(
    orig: Annotated[Path, typer.Argument(help="Original image or folder.")],
    adv: Annotated[list[Path], typer.Argument(help="Adversarial images or folders: one method each.")],
    patch: Annotated[int, typer.Option(min=1, help="Patch side k.")] = 7,
    stride: Annotated[int, typer.Option(min=1, help="Patch stride s.")] = 1,
    size: Annotated[int, typer.Option(min=0, help="Analysis size: shorter side; 0 keeps native size.")] = 64,
    approx: Annotated[bool, typer.Option(help="Entropic (Sinkhorn) estimate instead of the exact value.")] = False,
    resize: Annotated[bool, typer.Option(help="Resize each adversarial image onto its original's size.")] = False,
    strict: Annotated[bool, typer.Option(help="Files without a partner are an error.")] = False,
    plot: Annotated[Optional[Path], typer.Option(help="Histogram figure (PNG, one panel per metric).")] = None,
    csv_path: Annotated[Optional[Path], typer.Option("--csv", help="Per-pair CSV.")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Pairs and summary as JSON.")] = None,
    workers: Annotated[
        Optional[int], typer.Option(min=1, help="Pairs measured at once (default: one per core).")
    ] = None,
    device: DeviceOption = None,
    quiet: QuietOption = False,
) -> None:
    """l2, l-inf, IWD and SSIM between originals and adversarial images, with histograms.

    Folders pair by relative path and stem; an adversarial file may end in _adv<k> (cat_adv0.png
    pairs with cat.png). IWD is exact unless --approx or past 16384 patches per image; an estimate
    is marked ≈ and carries its error bound.
    """
    from iwdctl.measure import (
        MeasureSettings,
        measure_pairs,
        pair_images,
        plot_histograms,
        report,
        summarize,
        write_csv,
    )
    from iwdctl.runtime import device_name

    settings = MeasureSettings(patch, stride, size, True if approx else None, resize, device_name(device))
    if settings.device == "cpu":
        # POT (the fallback solver where no certificate is found) would import torch (2 s) only to
        # register a backend; this process passes it NumPy arrays alone.
        os.environ.setdefault("POT_BACKEND_DISABLE_PYTORCH", "1")
    pairing = pair_images(orig, adv, strict)
    with progress_bar(quiet, unit="pairs") as progress:
        results = measure_pairs(pairing.pairs, settings, progress, workers)
    if pairing.unpaired:
        error_console.print(
            f"[yellow]{len(pairing.unpaired)} files without a partner:[/] " + ", ".join(pairing.unpaired[:10])
        )
    approximate = sum(not result.iwd_exact for result in results)
    if len(results) <= 20:
        table = Table(title=f"{len(results)} pairs")
        for column in ("adversarial", "method", "l2", "l-inf", "IWD", "SSIM"):
            table.add_column(column, justify="left" if column in ("adversarial", "method") else "right")
        for result in results:
            mark = "" if result.iwd_exact else f" ≈ (±{100 * result.iwd_bound:.2g}%)"
            table.add_row(
                Path(result.adv).name,
                result.method,
                f"{result.l2:.4f}",
                f"{result.linf:.4f}",
                f"{result.iwd:.6f}{mark}",
                f"{result.ssim:.4f}",
            )
    else:
        table = Table(title=f"{len(results)} pairs")
        for column in ("method", "metric", "pairs", "mean", "median", "min", "max"):
            table.add_column(column, justify="left" if column in ("method", "metric") else "right")
        for method, entry in summarize(results).items():
            for key, label in (("l2", "l2"), ("linf", "l-inf"), ("iwd", "IWD"), ("ssim", "SSIM")):
                stats = entry[key]
                table.add_row(
                    method, label, str(entry["n"]), *(f"{stats[stat]:.5g}" for stat in ("mean", "median", "min", "max"))
                )
    console.print(table)
    if approximate:
        console.print(f"[yellow]≈ {approximate} IWD values are estimates (bound in iwd_bound), not exact[/]")
    if len(results) > 1:
        from iwdctl.console import text_histogram

        for metric, label in (("l2", "l2"), ("linf", "l-inf"), ("iwd", "IWD")):
            everything = [getattr(result, metric) for result in results]
            for method in dict.fromkeys(result.method for result in results):
                values = [getattr(result, metric) for result in results if result.method == method]
                console.print(f"[bold]{label}[/] — {method}")
                console.print("\n".join(text_histogram(values, min(everything), max(everything))), highlight=False)
    if plot:
        plot_histograms(results, plot)
    if csv_path:
        write_csv(results, csv_path)
    if json_path:
        write_json_atomic(json_path, report(results, pairing, settings))


@app.command("attack")
def attack_command(
    inputs: Annotated[
        Optional[list[Path]], typer.Argument(help="Images or folders (default: the embedded photo).")
    ] = None,
    model: ModelOption = "efficientnet_lite0",
    method: Annotated[
        str,
        typer.Option(
            help="iwda-ot, iwda, iwda-fast, iwda-amortised, fgsm, pgd, pgd-l2, stadv, adef or eot; pgd20: 20 steps."
        ),
    ] = "iwda-ot",
    target: Annotated[Optional[str], typer.Option(help="Targeted: class name, index or wnid.")] = None,
    targets_from: Annotated[
        Optional[Path],
        typer.Option(help="Targeted: per-image targets (and labels) from a CSV, e.g. nips17's TargetClass."),
    ] = None,
    labels: Annotated[Optional[Path], typer.Option(help="CSV of file + label (true labels).")] = None,
    one_based: Annotated[
        Optional[bool],
        typer.Option("--one-based/--zero-based", help="CSV classes count from 1 (default: 1 for NIPS17 columns)."),
    ] = None,
    tau: Annotated[
        Optional[float], typer.Option(help="Weight of the classification loss (iwda-ot, iwda, iwda-fast, stadv).")
    ] = None,
    num: Annotated[int, typer.Option(help="Adversarial samples per image (diverse noise draws).")] = 1,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("adv"),
    preset: Annotated[Optional[str], typer.Option(help="iwda schedule: paper, cpu or quick.")] = None,
    start_scale: Annotated[Optional[int], typer.Option(help="iwda: scale at which x is injected.")] = None,
    refine: Annotated[
        Optional[int], typer.Option(help="iwda: exact-IWD steps once a GAN sample fools (0: the GAN's own samples).")
    ] = None,
    candidates: Annotated[
        Optional[int],
        typer.Option(help="iwda: refined draws per sample; the adversarial one of least IWD is kept."),
    ] = None,
    generator: Annotated[
        Optional[Path],
        typer.Option(help="iwda: amortised attack, one forward pass of the generator in an IWDD checkpoint."),
    ] = None,
    precision: Annotated[
        Optional[str], typer.Option(help="iwda: fp32, or bf16: the GAN's passes under bfloat16 autocast (GPUs).")
    ] = None,
    eps: Annotated[
        Optional[str], typer.Option(help="Budget of l_p attacks (fgsm, pgd, pgd-l2, eot), e.g. 8/255 or 0.03.")
    ] = None,
    steps: Annotated[Optional[int], typer.Option(help="Iterations (iterative attacks).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Attack the first N images.")] = None,
    batch_size: BatchSizeOption = None,
    workers: WorkersOption = None,
    iwd: Annotated[
        str, typer.Option(help="The report's IWD: exact, approx (an estimate with a certified bound) or none.")
    ] = "exact",
    weights: WeightsOption = None,
    device: DeviceOption = None,
    seed: SeedOption = 0,
    quiet: QuietOption = False,
) -> None:
    """Adversarial examples: saved as PNGs at the classifier's input size, verified by re-reading them.

    Writes OUT/<stem>_adv<k>.png, OUT/report.json, OUT/report.csv and OUT/grid.png. A re-run skips
    finished images. Under torchrun the inputs are sharded over processes and one report is merged.
    """
    from iwdctl.attacks import make_attack
    from iwdctl.attacks.runner import AttackSettings, collect_records, run_attack, summarize, write_report
    from iwdctl.budgets import parse_budget, require_at_least, require_non_negative
    from iwdctl.data import discover
    from iwdctl.images import default_image_path
    from iwdctl.models import load_classifier
    from iwdctl.runtime import barrier, distributed_context

    require_non_negative(tau, "--tau")
    for name, value, minimum in (("--num", num, 1), ("--steps", steps, 1), ("--limit", limit, 1)):
        require_at_least(value, minimum, name)
    require_at_least(start_scale, 0, "--start-scale")
    require_at_least(refine, 0, "--refine")
    require_at_least(candidates, 1, "--candidates")
    budget = parse_budget(eps) if eps is not None else None
    if target is not None and targets_from is not None:
        raise IwdctlError("give either --target or --targets-from, not both")
    if generator is not None:
        if method not in ("iwda", "iwda-amortised"):
            raise IwdctlError("--generator goes with --method iwda (the amortised IWDA of an IWDD checkpoint)")
        method = "iwda-amortised"
    rank, world_size, target_device = distributed_context(resolve_device(device))
    batch_size, workers = _pipeline_sizes(batch_size, workers, target_device)
    settings = AttackSettings(method, num, seed, None, targets_from is not None, batch_size, workers, iwd)
    settings.validate()
    seed_everything(seed)
    classifier = load_classifier(model, device=target_device, weights=weights)
    csv_path = targets_from or labels
    samples = discover(
        inputs or [default_image_path()], classifier.classes, str(csv_path) if csv_path else None, one_based
    )
    samples = samples[:limit] if limit else samples
    if target is not None:
        settings = replace(settings, target=classifier.classes.resolve(target))
    # Batch-invariant outputs for jobs of several images; a lone image is not padded (16x its cost).
    victim = classifier.batch_invariant() if len(samples) > 1 else classifier
    options = {"tau": tau, "preset": preset, "start_scale": start_scale, "eps": budget, "steps": steps}
    options |= {"generator": generator, "refine": refine, "precision": precision, "candidates": candidates}
    attack = make_attack(method, victim, **options)
    with progress_bar(quiet or rank > 0, unit="images") as progress:
        attack.progress = progress
        run_attack(victim, attack, samples, settings, out, progress, rank, world_size)
    barrier()
    if rank > 0:
        return
    records = collect_records(samples, settings, out)
    summary = summarize(records, model, method)
    write_report(records, summary, out, classifier)
    table = Table(title=f"{method} on {model}: {len(records)} images" + (" (targeted)" if summary["targeted"] else ""))
    for column in ("ASR", "mean l2", "mean l-inf", "mean IWD", "s / image"):
        table.add_column(column, justify="right")
    mean_iwd = "-" if summary["mean_iwd"] is None else f"{summary['mean_iwd']:.5f}" + ("" if iwd == "exact" else " ≈")
    table.add_row(
        _fraction(summary["asr"]),
        f"{summary['mean_l2']:.3f}",
        f"{summary['mean_linf']:.4f}",
        mean_iwd,
        f"{summary['seconds_per_image']:.2f}",
    )
    console.print(table)
    if len(records) <= 20:
        detail = Table()
        for column in ("image", "label", "target", "after", "success", "IWD"):
            detail.add_column(column)
        for record in records:
            detail.add_row(
                Path(record["input"]).name,
                record["label"],
                record["target"] or "-",
                ", ".join(record["pred_after_all"]),
                "yes" if record["success"] else "no",
                "-" if record["iwd"] is None else f"{record['iwd']:.5f}",
            )
        console.print(detail)
    console.print(f"outputs in {out}/ (report.json, report.csv, grid.png)")


@app.command("defend")
def defend_command(
    data: Annotated[Path, typer.Option(help="Folder with train/ and val/ in ImageFolder layout.")],
    method: Annotated[str, typer.Option(help="natural, pgd, free or iwdd.")] = "iwdd",
    arch: Annotated[
        str, typer.Option(help="Architecture (preact_resnet18_w16, preact_resnet18, small_cnn, resnet101, ...).")
    ] = ("preact_resnet18_w16"),
    out: Annotated[Path, typer.Option(help="Checkpoint (.safetensors); training state goes beside it.")] = Path(
        "model.safetensors"
    ),
    epochs: Annotated[int, typer.Option(min=1)] = 30,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    lr: Annotated[float, typer.Option(help="SGD learning rate.")] = 0.1,
    schedule: Annotated[
        str, typer.Option(help="multistep (lr x0.1 at 50% and 75% of the steps) or cosine (annealed to 0).")
    ] = "multistep",
    precision: Annotated[
        str, typer.Option(help="fp32, or bf16: forward and backward passes under bfloat16 autocast.")
    ] = "fp32",
    eps: Annotated[str, typer.Option(help="l-inf budget of pgd and free training.")] = "8/255",
    pgd_steps: Annotated[
        int, typer.Option(min=1, help="PGD steps K of pgd training and of IWDD's refinement (step 2.5 eps / K).")
    ] = 7,
    replays: Annotated[int, typer.Option(min=1, help="Free training: replays m per minibatch.")] = 4,
    beta: Annotated[float, typer.Option(help="IWDD: weight of the clean loss.")] = 0.1,
    tau: Annotated[float, typer.Option(help="IWDD: weight of the generator's classification loss.")] = 0.1,
    refine_steps: Annotated[
        Optional[int], typer.Option(min=0, help="IWDD: PGD steps refining the generator's samples (default K).")
    ] = None,
    sample_weight: Annotated[
        float, typer.Option(help="IWDD: weight of the loss on the generator's raw, unrefined samples.")
    ] = 0.0,
    save_every: Annotated[int, typer.Option(min=0, help="Also save the training state every N steps.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue the run whose state lies beside --out.")] = False,
    device: DeviceOption = None,
    seed: SeedOption = 0,
    quiet: QuietOption = False,
) -> None:
    """Train a classifier: natural, PGD (Madry), free (Shafahi) or IWDD adversarial training.

    Writes OUT (safetensors with metadata), OUT's .state.pt (resumable) and .metrics.csv every epoch.
    Under torchrun: DDP over the processes, rank 0 writes.
    """
    from iwdctl.budgets import parse_budget, require_non_negative
    from iwdctl.defend import TrainConfig, defend
    from iwdctl.runtime import distributed_context

    if out.suffix != ".safetensors":
        raise IwdctlError(f"{out}: checkpoints are written as .safetensors")
    for name, value in (("--lr", lr), ("--beta", beta), ("--tau", tau)):
        require_non_negative(value, name)
    budget = parse_budget(eps)
    rank, world_size, target_device = distributed_context(resolve_device(device))
    seed_everything(seed)
    config = TrainConfig(
        data=str(data),
        out=str(out),
        method=method,
        arch=arch,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        eps=budget,
        pgd_steps=pgd_steps,
        replays=replays,
        beta=beta,
        tau=tau,
        refine_steps=refine_steps,
        sample_weight=sample_weight,
        seed=seed,
        save_every=save_every,
        schedule=schedule,
        precision=precision,
    )
    table = Table(title=f"{method} training of {arch} on {data}")
    for column in ("epoch", "loss", "train acc", "val acc", "seconds", "lr"):
        table.add_column(column, justify="right")

    def on_epoch(metrics: object) -> None:
        if rank == 0 and not quiet:
            console.print(
                f"epoch {metrics.epoch}: loss {metrics.loss:.3f}, train {_fraction(metrics.train_accuracy)}, "  # type: ignore[attr-defined]
                f"val {_fraction(metrics.val_accuracy)}, {metrics.seconds:.1f} s"  # type: ignore[attr-defined]
            )

    with progress_bar(quiet or rank > 0) as progress:
        history = defend(config, resume, progress, on_epoch, rank, world_size, target_device)
    if rank == 0:
        for metrics in history:
            table.add_row(
                str(metrics.epoch),
                f"{metrics.loss:.3f}",
                _fraction(metrics.train_accuracy),
                _fraction(metrics.val_accuracy),
                f"{metrics.seconds:.1f}",
                f"{metrics.lr:.4g}",
            )
        console.print(table)
        console.print(f"checkpoint: {out}")


def _reflowed(doc: str) -> str:
    """A docstring with each paragraph on one line: typer's help keeps a paragraph's line breaks, and
    at the terminal's width those lines wrap raggedly."""
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in inspect.cleandoc(doc).split("\n\n"))


for _command in app.registered_commands:
    if _command.callback and _command.callback.__doc__:
        _command.help = _reflowed(_command.callback.__doc__)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning expected errors into one line on stderr and exit code 2."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in arguments
    try:
        code = app(args=arguments, prog_name="iwdctl", standalone_mode=False)
    except typer.TyperException as error:  # a usage error: an unknown option, a value of the wrong type
        if type(error).__name__ == "NoArgsIsHelpError":  # the help was printed
            return 0
        if debug:
            traceback.print_exc()
        print(f"iwdctl: error: {error.format_message()}", file=sys.stderr)
        return 2
    except typer.Abort:
        print("iwdctl: aborted", file=sys.stderr)
        return 130
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 0
    except (IwdctlError, OSError) as error:
        if debug:
            traceback.print_exc()
        message = str(error) if isinstance(error, IwdctlError) else f"{type(error).__name__}: {error}"
        print(f"iwdctl: error: {message}", file=sys.stderr)
        return 2
    return code if isinstance(code, int) else 0


def console_script() -> NoReturn:
    """The `iwdctl` command (and `python -m iwdctl`): main(), then exit with its code.

    The work is done and written by then, so the collector is frozen first: Python's last garbage
    collections over numba's (and torch's) objects took 0.3-0.4 s of a 1.4 s `iwdctl measure` of one
    64 px pair. Objects are still freed by reference counting and exit handlers still run."""
    code = main()
    gc.freeze()
    sys.exit(code)
