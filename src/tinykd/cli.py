"""The `tinykd` command: a thin face over the Python API.

Each command parses its arguments, loads a recipe, and calls one library
function. A `TinykdError` (bad input) is printed as one line and exits with
code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tinykd.errors import TinykdError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Distill a big model into a small one, measure what was gained, and train it on any hardware.",
)

SetOption = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override a recipe field: KEY.SUB=VALUE (repeatable).")
]
OutOption = Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (default: runs/NAME-TIMESTAMP).")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace an existing, non-empty run folder.")]


@app.command()
def train(recipe: str, set_: SetOption = None, out: OutOption = None, overwrite: OverwriteOption = False) -> None:
    """Train a model on labels alone (a teacher, or a baseline student). RECIPE: a YAML file or a built-in name."""
    from tinykd.recipes import load_recipe
    from tinykd.run import run

    run(load_recipe(recipe, set_), out, overwrite, mode="train")


@app.command()
def distill(recipe: str, set_: SetOption = None, out: OutOption = None, overwrite: OverwriteOption = False) -> None:
    """Train a student from a frozen teacher. RECIPE: a YAML file or a built-in name."""
    from tinykd.recipes import load_recipe
    from tinykd.run import run

    run(load_recipe(recipe, set_), out, overwrite, mode="distill")


@app.command("eval")
def evaluate(
    checkpoint: Annotated[str, typer.Argument(help="A .safetensors checkpoint or a run folder.")],
    split: Annotated[str, typer.Option(help="test or val.")] = "test",
    set_: SetOption = None,
    measure: Annotated[bool, typer.Option(help="Also measure size, MACs, latency and throughput.")] = True,
) -> None:
    """Evaluate a trained model on its dataset's test (or validation) split."""
    from tinykd.evaluate import evaluate_checkpoint
    from tinykd.report import format_table

    row = evaluate_checkpoint(checkpoint, split=split, overrides=set_, measure=measure)
    print(format_table([row], title=f"{checkpoint}: {split} set"))


@app.command()
def demo(
    out: OutOption = None,
    overwrite: OverwriteOption = False,
    epochs: Annotated[int | None, typer.Option(help="Student epochs (default: the recipe's).")] = None,
    retrain_teacher: Annotated[
        bool, typer.Option(help="Train the teacher here instead of using the shipped one.")
    ] = False,
    set_: SetOption = None,
) -> None:
    """Fashion-MNIST: teacher, student from scratch, distilled student, side by side (under 10 min on 2 cores)."""
    from tinykd.demo import run_demo

    run_demo(out, overwrite=overwrite, epochs=epochs, retrain_teacher=retrain_teacher, overrides=set_)


@app.command()
def env() -> None:
    """Versions, devices, and which backend each runtime.device value would use here."""
    from tinykd.engine.runtime import describe_environment

    for name, value in describe_environment():
        print(f"{name:22s} {value}")


@app.command()
def recipes() -> None:
    """List the built-in recipes (use their names wherever a recipe file is expected)."""
    from tinykd.recipes import builtin_recipes

    for name, path in sorted(builtin_recipes().items()):
        first = path.read_text().splitlines()[0] if path.stat().st_size else ""
        print(f"{name:28s} {first.lstrip('# ').strip()}")


def main(argv: list[str] | None = None) -> Any:
    """Entry point: run the app, turning user errors into one line and exit code 2."""
    try:
        return app(args=argv, standalone_mode=False) if argv is not None else _standalone()
    except TinykdError as exc:
        print(f"tinykd: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("tinykd: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def _standalone() -> Any:
    import click

    try:
        return app(standalone_mode=False)
    except click.exceptions.Abort:
        raise KeyboardInterrupt from None
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except click.exceptions.Exit as exc:
        raise SystemExit(exc.exit_code) from None
