"""The `iwdctl` command line: parse, call the core, print. Errors become one line and exit code 2."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from iwdctl.console import console, progress_bar
from iwdctl.errors import IwdctlError
from iwdctl.files import write_json_atomic
from iwdctl.runtime import seed_everything

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
    limit: Annotated[Optional[int], typer.Option(min=1, help="Use the first N images.")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write results as JSON.")] = None,
    weights: WeightsOption = None,
    device: DeviceOption = None,
    seed: SeedOption = 0,
    quiet: QuietOption = False,
) -> None:
    """Clean top-1 / top-5 accuracy on labelled images; with no --data, the top-5 of the default image."""
    from iwdctl.evaluate import clean_accuracy, labelled_samples, predict
    from iwdctl.images import default_image_path
    from iwdctl.models import load_classifier

    seed_everything(seed)
    classifier = load_classifier(model, device=device, weights=weights)
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
    with progress_bar(quiet) as progress:
        result = clean_accuracy(classifier, samples, batch_size, progress, model, ", ".join(map(str, data)))
    table = Table(title=f"{model}: {result.n} images")
    for column in ("model", "images", "top-1", "top-5", "seconds"):
        table.add_column(column, justify="right" if column != "model" else "left")
    table.add_row(model, str(result.n), _fraction(result.top1), _fraction(result.top5), f"{result.seconds:.1f}")
    console.print(table)
    if json_path:
        write_json_atomic(json_path, result.to_dict())


def _not_built(name: str, issue: str) -> None:
    @app.command(
        name,
        help=f"Not available yet: {issue}. Exits with code 2.",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )
    def command(ctx: typer.Context) -> None:
        raise IwdctlError(f"'iwdctl {name}' is not available in this version yet ({issue})")


_not_built("attack", "IWDA and baseline attacks")
_not_built("defend", "natural, PGD, free and IWDD training")
_not_built("measure", "IWD, l2, l-inf and SSIM between image pairs")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning expected errors into one line on stderr and exit code 2."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in arguments
    try:
        # Click handles usage errors itself (message, exit code 2) and raises SystemExit.
        app(args=arguments, prog_name="iwdctl")
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 0
    except (IwdctlError, OSError) as error:
        if debug:
            traceback.print_exc()
        message = str(error) if isinstance(error, IwdctlError) else f"{type(error).__name__}: {error}"
        print(f"iwdctl: error: {message}", file=sys.stderr)
        return 2
    return 0
