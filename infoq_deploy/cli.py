"""`infoq-deploy`: the whole pipeline with no subcommand, or one stage per subcommand.

Every user mistake surfaces as `UserError`: one line on stderr, exit code 2, and no
output file written (outputs are written atomically, at the end).
"""

from __future__ import annotations

import argparse
import difflib
import logging
import math
import os
import signal
import sys
import threading
import warnings

from infoq_deploy import __version__
from infoq_deploy.backends import registry as backend_registry
from infoq_deploy.core.errors import UserError
from infoq_deploy.export import registry as export_formats
from infoq_deploy.profile import registry as profile_methods
from infoq_deploy.quantize import ptq

SUBCOMMANDS = ("inspect", "profile", "allocate", "quantize", "finetune", "export", "verify", "report", "targets")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one UserError sentence (exit 2), not usage plus error."""

    def error(self, message: str):
        raise UserError(f"{message}; see `{self.prog} --help`")


def _int_at_least(lo: int, hi: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if value < lo or (hi is not None and value > hi):
            span = f"at least {lo}" if hi is None else f"from {lo} to {hi}"
            raise argparse.ArgumentTypeError(f"is {value}; it must be {span}")
        return value

    parse.__name__ = "integer"
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"is {text}; it must be a finite number >= 0")
    return value


COUNT = _int_at_least(1)  # sample counts, sizes, projections, neighbours
SEED = _int_at_least(0, 2**32 - 1)  # numpy's seed range


def _pin(text: str) -> tuple[str, tuple[int, int] | None]:
    where, _, value = text.partition("=")
    if where not in ("first", "last") or not value:
        raise argparse.ArgumentTypeError(f"'{text}' is not first=W,A, last=W,A, first=free or last=free")
    if value == "free":
        return where, None
    try:
        w, a = (int(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}': give the pair as W,A (e.g. last=4,8) or free") from None
    return where, (w, a)


def _pin_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pin", action="append", type=_pin, default=[], metavar="first|last=W,A|free",
                   help="pin the first or last quantizable layer at w W / a A bits, or free it (repeat for both); "
                        "overrides the target's pins")
    p.add_argument("--no-pin", action="store_true", help="free the layers the target pins (then --pin adds back)")


def _ptq_args(p: argparse.ArgumentParser, rounding: bool = True) -> None:
    p.add_argument("--ptq", choices=ptq.ALGORITHMS, default=None,
                   help="post-training quantization: minmax (thresholds at the max), mse (thresholds of least "
                        "quantization error), gptq (minmax thresholds, GPTQ rounding); profile, allocate and quantize "
                        f"take the same one (default {ptq.DEFAULT_ALGORITHM}, or minmax with a note when the "
                        "calibration set is too small for it)")
    if rounding:
        p.add_argument("--bias-correction", action=argparse.BooleanOptionalAction, default=ptq.DEFAULT_BIAS_CORRECTION,
                       help="correct each layer's bias for the mean shift quantization causes (Brevitas bias "
                            f"correction; default {'on' if ptq.DEFAULT_BIAS_CORRECTION else 'off'})")


def _input_shape(text: str) -> tuple[int, int, int]:
    try:
        dims = tuple(int(p) for p in text.split(","))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not C,H,W (three positive integers, e.g. 3,224,224)")
    return dims  # type: ignore[return-value]


def _model_args(p: argparse.ArgumentParser, positional_required: bool = True) -> None:
    kw = {} if positional_required else {"nargs": "?", "default": None}
    p.add_argument(
        "model",
        metavar="MODEL",
        help="torchvision:NAME | zoo:NAME | path/to/model.onnx | path/to/file.py:factory",
        **kw,
    )
    p.add_argument("--weights", help="weights file (a state dict) for torchvision:, file.py: and zoo: models")
    p.add_argument("--input-shape", type=_input_shape, help="C,H,W of one input (default: the model's own)")
    p.add_argument("--data-root", help="where the zoo finds its weights (default ../shared/data)")


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", metavar="cpu|cuda|cuda:N|auto",
                   help="where the torch work runs (default cpu; auto: a GPU when torch sees one); "
                        "files are written from the CPU either way")
    p.add_argument("--threads", type=COUNT, default=None,
                   help="torch's CPU threads (default: torch's own choice, the cores); GPTQ's rounding, and so the "
                        "weights it chooses, can differ between thread counts: pass the same N to reproduce a run")


def _profile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="a target name (see `infoq-deploy targets`) or a .toml file")
    p.add_argument("--method", choices=profile_methods.names(), default=None,
                   help=f"sensitivity method (default {profile_methods.DEFAULT}; the methods are listed below)")
    p.add_argument("--data", help="calibration data: image folder, .tar.gz of one, .npz/.pt, or builtin:NAME")
    p.add_argument("--labels", help="labels file overriding those of --data")
    p.add_argument("--calib-size", type=COUNT, default=None, help="number of calibration samples (default: all)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--n-proj", type=COUNT, default=32, help="InfoQ: random projections per sliced-MI estimate")
    p.add_argument("--k", type=COUNT, default=3, help="InfoQ: neighbours of the KSG / Ross estimators")
    p.add_argument("--encoder", default=None,
                   help="InfoQ: input embedding, a .onnx file or MODEL spec (default: pool-pca, no download)")
    p.add_argument("--no-inverse-bits", action="store_true", help="InfoQ: drop the 1/b factor of Eq. 4 (ablation)")
    _device_arg(p)
    p.add_argument("--pairwise", action="store_true",
                   help="InfoQ: also measure every pair of free layers quantized together at the two lowest weight "
                        "widths, and allocate by the quadratic program (as CLADO does with the loss)")
    p.add_argument("--noise-floor", action="store_true",
                   help="InfoQ: also run every layer at 16 bits (a change about as small as the baseline's own "
                        "rounding) and score its 8 bits by that run's ΔSMI, the estimators' noise floor, not 0")
    p.add_argument("--shrink", action="store_true",
                   help="InfoQ: take one standard error (over the projections) off each |ΔSMI|, at least 0, "
                        "so the estimators' noise does not score as sensitivity")
    p.add_argument("--label-term", choices=("labels", "logits"), default="labels",
                   help="InfoQ: measure SMI(L;Y) against the class labels (default; needs k+1 images in two classes) "
                        "or against the float model's logits (any number of images per class, e.g. ImageNet)")


def _methods_epilog() -> str:
    lines = [f"  {m.name:<8} {m.summary}" for m in profile_methods.METHODS.values()]
    return "sensitivity methods (--method):\n" + "\n".join(lines)


def _run_args(p: argparse.ArgumentParser) -> None:
    """Options of the stages after allocation (quantize, fine-tune, export, verify, report)."""
    p.add_argument("--eval-data", help="held-out labelled data for accuracy and verification (default: half of --data)")
    p.add_argument("--eval-size", type=COUNT, default=None, help="evaluation samples (default: all)")
    p.add_argument("--train-data", help="fine-tuning data (default: the calibration data)")
    p.add_argument("--train-size", type=COUNT, default=None, help="fine-tuning samples drawn from --train-data (default: all)")
    p.add_argument("--epochs", type=_int_at_least(0), default=0, help="quantization-aware fine-tuning epochs (default 0: post-training only)")
    p.add_argument("--lr", type=_positive_float, default=None, help="fine-tuning learning rate")
    p.add_argument("--batch-size", type=COUNT, default=128, help="fine-tuning batch size")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in the same -o RUN_DIR")
    p.add_argument("--verify-size", type=COUNT, default=None, help="held-out samples the exported graph is run on (default: all)")
    p.add_argument("--consumer-size", type=COUNT, default=200,
                   help="of those, samples run through the consumer flow's own simulation (hls4ml's C simulation; default 200)")
    p.add_argument("--backend", choices=backend_registry.flow_names(),
                   help="the consumer flow that checks the exported file, before profiling (whether it takes the "
                        "model) and in verify: hls4ml or finn for fpga-int, or the format's reference executor "
                        "(qonnx, ort) alone; default: the format's pipeline consumers (qonnx: hls4ml)")
    p.add_argument("-o", "--output", default=None, help="run directory (default runs/<model>-<target>)")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")


def build_parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    sub_parser = _Parser(prog="infoq-deploy", description=__doc__)
    sub_parser.add_argument("--version", action="version", version=f"infoq-deploy {__version__}")
    sub = sub_parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="list the quantizable layers of a model")
    _model_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")

    p = sub.add_parser("profile", help="write a sensitivity table", epilog=_methods_epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_args(p)
    _profile_args(p)
    _ptq_args(p, rounding=False)
    p.add_argument("-o", "--output", required=True, help="sensitivity table to write (JSON)")

    p = sub.add_parser("allocate", help="choose bit-widths under budgets with an ILP")
    p.add_argument("sensitivity", metavar="SENSITIVITY.json")
    p.add_argument("--target", required=True)
    p.add_argument("--budget", action="append", required=True, help="e.g. 4.5MB, 300KB, 23GBOPs, 2.5ms, 20kLUT, 50kcycles, 12x, 3.5bit; repeat for several")
    p.add_argument("--alpha", type=_positive_float, default=1.0, help="weight of activation sensitivity in the objective")
    _pin_args(p)
    _ptq_args(p, rounding=False)
    p.add_argument("-o", "--output", required=True, help="allocation to write (JSON)")
    p.add_argument("--json", action="store_true", help="print the allocation JSON to stdout")

    p = sub.add_parser("quantize", help="build and calibrate the Brevitas model of ALLOCATION.json: QUANTIZED.pt")
    _model_args(p)
    p.add_argument("allocation", metavar="ALLOCATION.json")
    p.add_argument("--target", help="the allocation's target (default: the one it names)")
    p.add_argument("--data", help="calibration data (default for zoo:fashion-cnn: builtin:fashion-mnist)")
    p.add_argument("--labels", help="labels file overriding those of --data")
    p.add_argument("--calib-size", type=COUNT, default=None, help="number of calibration samples (default: all)")
    p.add_argument("--eval-data", help="held-out labelled data for accuracy (default: half of --data)")
    p.add_argument("--eval-size", type=COUNT, default=None, help="evaluation samples (default: all)")
    p.add_argument("--seed", type=SEED, default=0)
    _ptq_args(p)
    _device_arg(p)
    p.add_argument("-o", "--output", required=True, help="quantized model file to write (.pt)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")

    p = sub.add_parser("finetune", help="LSQ fine-tuning of QUANTIZED.pt: a new quantized model file")
    p.add_argument("quantized", metavar="QUANTIZED.pt")
    p.add_argument("--train-data", help="fine-tuning data (default: the calibration data QUANTIZED.pt records)")
    p.add_argument("--train-size", type=COUNT, default=None, help="fine-tuning samples drawn from --train-data (default: all)")
    p.add_argument("--eval-data", help="held-out labelled data (default: the evaluation data QUANTIZED.pt records)")
    p.add_argument("--eval-size", type=COUNT, default=None, help="evaluation samples (default: all)")
    p.add_argument("--epochs", type=int, required=True, help="fine-tuning epochs")
    p.add_argument("--lr", type=_positive_float, default=None, help="learning rate (default 1e-4)")
    p.add_argument("--batch-size", type=COUNT, default=128)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--checkpoints", help="checkpoint directory (default: checkpoints/ beside -o)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint of an interrupted run")
    _device_arg(p)
    p.add_argument("-o", "--output", required=True, help="quantized model file to write (.pt)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")

    p = sub.add_parser("export", help="write QUANTIZED.pt as QONNX or QCDQ ONNX (the target's format by default)")
    p.add_argument("quantized", metavar="QUANTIZED.pt")
    p.add_argument("--format", choices=export_formats.names(), help="override the target's export format: "
                   + "; ".join(f"{f.name}: {f.summary}" for f in export_formats.FORMATS.values()))
    p.add_argument("-o", "--output", required=True, help="ONNX file to write")
    p.add_argument("--json", action="store_true", help="print a JSON summary")

    p = sub.add_parser("verify", help="run MODEL.onnx against QUANTIZED.pt: agreement, logits, bits in the graph")
    p.add_argument("onnx", metavar="MODEL.onnx")
    p.add_argument("quantized", metavar="QUANTIZED.pt")
    p.add_argument("--eval-data", help="labelled data (default: the evaluation data QUANTIZED.pt records)")
    p.add_argument("--eval-size", type=COUNT, default=None, help="samples drawn from --eval-data (default: all)")
    p.add_argument("--verify-size", type=COUNT, default=None, help="class-balanced samples to run (default: all)")
    p.add_argument("--format", choices=export_formats.names(), help="the file's format (default: the target's)")
    p.add_argument("--backend", choices=backend_registry.flow_names(),
                   help="the program that runs the file: the format's reference executor (qonnx, ort) only, or "
                        "that and a consumer flow (hls4ml's C simulation, FINN's hardware layers); default: the "
                        "reference and the format's pipeline consumers (qonnx: hls4ml)")
    p.add_argument("--consumer-size", type=COUNT, default=200, help="samples run through the consumer flow (default 200)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("-o", "--output", help="verification file to write (JSON), the input of `report`")
    p.add_argument("--json", action="store_true", help="print the verification as JSON")

    p = sub.add_parser("report", help="report.md, report.json and plots from QUANTIZED.pt and VERIFY.json")
    p.add_argument("quantized", metavar="QUANTIZED.pt")
    p.add_argument("verification", metavar="VERIFY.json")
    p.add_argument("--sensitivity", help="the sensitivity table the allocation came from (for the heat map)")
    p.add_argument("-o", "--output", required=True, help="directory to write the report into")
    p.add_argument("--json", action="store_true", help="print report.json")

    p = sub.add_parser("targets", help="list the hardware targets, or measure one's latency table on a model")
    p.add_argument("--json", action="store_true")
    actions = p.add_subparsers(dest="targets_action", metavar="{measure}")
    m = actions.add_parser("measure", help="measure each layer of MODEL in every precision TARGET allows, in ONNX "
                           "Runtime, and write TARGET with that latency table as a new target file")
    m.add_argument("target", metavar="TARGET", help="a target with a latency metric (edge-cpu-ort) or its .toml file")
    _model_args(m)
    m.add_argument("--data", help="calibration data for the scales (default: random inputs; kernel times do not "
                   "depend on the values)")
    m.add_argument("--calib-size", type=COUNT, default=64, help="calibration samples (default 64)")
    m.add_argument("--runs", type=COUNT, default=30, help="profiled runs per precision (default 30)")
    m.add_argument("--seed", type=SEED, default=0)
    m.add_argument("-o", "--output", required=True, help="the new target file, NAME.toml (its table: NAME.latency.json)")

    run_parser = _Parser(
        prog="infoq-deploy",
        description="Run the whole pipeline (import, profile, allocate, ...) on MODEL, or on the bundled "
        "default model when none is named. Stages: " + ", ".join(SUBCOMMANDS) + " (see `infoq-deploy STAGE -h`).",
        epilog=_methods_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run_parser.add_argument("--version", action="version", version=f"infoq-deploy {__version__}")
    _model_args(run_parser, positional_required=False)
    _profile_args(run_parser)
    run_parser.add_argument("--budget", action="append", help="e.g. 4.5MB, 23GBOPs, 20kLUT, 3.5bit; repeat for several")
    run_parser.add_argument("--allocation", metavar="ALLOCATION.json",
                            help="take the bit-widths from this file instead of profiling and allocating")
    run_parser.add_argument("--alpha", type=_positive_float, default=1.0)
    _pin_args(run_parser)
    _ptq_args(run_parser)
    _run_args(run_parser)
    return sub_parser, run_parser


def _check_model_or_subcommand(word: str) -> None:
    """The first word is a subcommand or a model (zoo:NAME, torchvision:NAME, FILE.onnx, FILE.py:factory)."""
    from pathlib import Path

    if ":" in word or word.endswith(".onnx") or Path(word).exists():
        return
    close = difflib.get_close_matches(word, SUBCOMMANDS, n=1)
    hint = f"did you mean `infoq-deploy {close[0]}`? " if close else ""
    raise UserError(f"'{word}' is neither a subcommand nor a model; {hint}subcommands: {', '.join(SUBCOMMANDS)}; "
                    "a model is zoo:NAME, torchvision:NAME, FILE.onnx or FILE.py:factory")


class Terminated(KeyboardInterrupt):
    """SIGTERM (a build pipeline's timeout, `kill`), raised like Ctrl-C so every write cleans up after itself."""


def _terminate(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        return _main(argv)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _set_threads(args) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _main(argv: list[str] | None) -> int:
    # Import-time chatter of optional GPU pieces (torch's CUDA_HOME probe, Brevitas's
    # Hadamard kernels) is irrelevant to a CPU user and would bury the one-line errors.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="fast_hadamard_transform package not found")
    argv = list(sys.argv[1:] if argv is None else argv)
    sub_parser, run_parser = build_parsers()
    try:
        if argv and argv[0] in SUBCOMMANDS:
            args = sub_parser.parse_args(argv)
            _set_threads(args)
            from infoq_deploy import commands

            return commands.run_subcommand(args)
        if argv and argv[0] in ("-h", "--help") and len(argv) == 1:
            run_parser.print_help()
            sub_action = next(a for a in sub_parser._actions if isinstance(a, argparse._SubParsersAction))
            helps = {a.dest: a.help for a in sub_action._choices_actions}
            print("\nsubcommands (each stage alone, on the previous stage's file):")
            for name in SUBCOMMANDS:
                print(f"  {name:<9} {helps.get(name, '')}")
            return 0
        if argv and not argv[0].startswith("-"):
            _check_model_or_subcommand(argv[0])
        args = run_parser.parse_args(argv)
        _set_threads(args)
        from infoq_deploy import commands

        return commands.cmd_run(args)
    except UserError as exc:  # one line, whatever a library put in the message
        print(f"infoq-deploy: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except BrokenPipeError:  # `infoq-deploy inspect M | head`: the reader has all it wanted
        # further writes (and the interpreter's flush at exit) would raise again: send them nowhere
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what a shell reports for a process ended by SIGPIPE (128 + 13)
    except OSError as exc:  # what the output claims and atomic writes did not foresee
        from infoq_deploy.core.outputs import os_error_message

        print(f"infoq-deploy: error: {os_error_message(exc, exc.filename or 'an output')}", file=sys.stderr)
        return 2
    except Terminated:
        print("infoq-deploy: terminated (SIGTERM); no output was left half-written", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("infoq-deploy: interrupted; no output was left half-written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
