from iwdctl.cli import console_script

console_script()
