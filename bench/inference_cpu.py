"""CPU inference in two memory formats -> bench/results/inference_cpu.json.   (about 3 minutes on 2 cores)

Export, encoding and evaluation only run the trained model forward (a traversal decodes 49 volumes at
128³). For Exp2 at base_filters 16, in one process and one run: the median seconds of decoding a batch
of 6 codes (a traversal's batch) and of encoding one subject, contiguous against channels_last_3d, in
float32 and in bfloat16 autocast, on 1 and 2 threads. The ratio records compare within the run.
Also the float32 decode's largest deviation from a float64 copy of the model in each memory format:
CPU GroupNorm in channels_last_3d is the less accurate one (3e-3 against 4e-6 here, for outputs of
size ~3), which is why export/encoding/evaluation stay contiguous on CPU.
Training is not measured here: its backward pass is slower in channels_last_3d on CPU.

    python bench/inference_cpu.py --out bench/results/inference_cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODELS, record, save_records, timed  # noqa: E402

FORMATS = {"contiguous": torch.contiguous_format, "channels_last_3d": torch.channels_last_3d}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench/results/inference_cpu.json")
    parser.add_argument("--base-filters", type=int, default=16)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = MODELS["exp2"](base_filters=args.base_filters).eval()
    z = torch.randn(6, 128)
    x = torch.rand(1, 4, 128, 128, 128)
    records = []
    with torch.inference_mode():
        reference = copy.deepcopy(model).double().decode(z.double())
        for name, memory_format in FORMATS.items():
            deviation = (model.to(memory_format=memory_format).decode(z).double() - reference).abs().max()
            records.append(
                record(
                    "decode_float32_max_abs_deviation_from_float64",
                    float(deviation),
                    "abs",
                    memory_format=name,
                    output_max_abs=float(reference.abs().max()),
                )
            )
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for precision in ("32-true", "bf16-mixed"):
            seconds = {}
            for name, memory_format in FORMATS.items():
                model.to(memory_format=memory_format)
                autocast = (
                    torch.autocast("cpu", dtype=torch.bfloat16)
                    if precision == "bf16-mixed"
                    else contextlib.nullcontext()
                )
                with torch.inference_mode(), autocast:
                    seconds["decode", name] = timed(lambda: model.decode(z), repeats=3)
                    seconds["encode", name] = timed(lambda: model.encoder(x), repeats=3)
                config = dict(
                    model="exp2", base_filters=args.base_filters, precision=precision, threads=threads
                )
                records.append(
                    record(
                        "decode_6_codes_seconds", seconds["decode", name], "s", memory_format=name, **config
                    )
                )
                records.append(
                    record(
                        "encode_1_subject_seconds", seconds["encode", name], "s", memory_format=name, **config
                    )
                )
            for step in ("decode", "encode"):
                ratio = seconds[step, "channels_last_3d"] / seconds[step, "contiguous"]
                records.append(
                    record(
                        f"{step}_channels_last_over_contiguous",
                        ratio,
                        "ratio",
                        **config,
                        note="same run; < 1: channels_last_3d is faster",
                    )
                )
    save_records(records, args.out)


if __name__ == "__main__":
    main()
