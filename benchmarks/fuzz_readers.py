"""Fuzz every file reader with many generated cases and record how each case ended.

The generators, the per-case checks (the reader's own error with one sentence naming the
file, or a correct result; a time limit; no jump in peak memory; the files unchanged) and
the real samples are those of ``tests/io/test_fuzz_readers.py``; this script runs them with
more hypothesis examples than the test suite and writes the counts per reader.

    python benchmarks/fuzz_readers.py --examples 300 --json benchmarks/results/fuzz_readers.json

Any case that ends otherwise stops the script with the failing example.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _load_test_module():
    sys.path.insert(0, str(ROOT / "tests"))  # conftest.py (the tiny model's recipe)
    spec = importlib.util.spec_from_file_location(
        "test_fuzz_readers", ROOT / "tests" / "io" / "test_fuzz_readers.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> int:
    """Run the fuzz generators for every reader and write the counts as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=300, help="hypothesis examples")
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/fuzz_readers.json"))
    args = parser.parse_args()

    os.environ["NAPARI_UNET_NUCLEI_FUZZ_EXAMPLES"] = str(args.examples)
    fuzz = _load_test_module()
    import conftest

    fuzz.EXAMPLES = args.examples
    kromp_root = conftest.KROMP_ROOT
    with np.load(kromp_root / "nuclei_128.npz", allow_pickle=False) as data:
        lab_arrays = (data["X"], data["Y"], data["names"])
    start = time.perf_counter()
    model = conftest.kromp_tiny_model.__wrapped__(kromp_root)
    with tempfile.TemporaryDirectory(prefix="fuzz-readers-") as folder:
        work = Path(folder)
        readers = fuzz.build_readers(work / "samples", kromp_root, lab_arrays, model)
        for number, name in enumerate(fuzz.READER_NAMES):
            reader = readers[name]
            cases = work / f"cases-{number}"
            cases.mkdir()
            fuzz.run_case(reader, fuzz.new_case(cases, reader), "the real sample")
            fuzz.truncations(reader, cases)
            fuzz.fuzz_reader(reader, cases, args.examples)
            fuzz.leading_characters(reader, cases)
            fuzz.swapped_and_empty(reader, readers, cases)
            fuzz.not_files(reader, cases)
            print(f"{name}: {sum(fuzz.COUNTS[name].values())} cases", flush=True)
        for number, check in enumerate(
            (
                fuzz.test_huge_declared_sizes_are_refused_before_allocating,
                fuzz.test_nested_zips_are_refused,
                fuzz.test_pickles_that_would_run_code_never_run,
            )
        ):
            cases = work / f"special-{number}"
            cases.mkdir()
            check(readers, cases)
    seconds = time.perf_counter() - start

    print("\nreader                      cases (refused with a sentence / read correctly)")
    for line in fuzz.count_table():
        print(line)
    total = sum(sum(counts.values()) for counts in fuzz.COUNTS.values())
    print(f"{'all readers':<26} {total:6d} in {seconds:.0f} s")
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "examples_per_generator": args.examples,
        "seconds": round(seconds, 1),
        "total_cases": total,
        "outcomes": "every case ended in the reader's own error with one sentence naming the "
        "file ('refused') or in a correct result ('read'); none raised another exception, hung, "
        "grew peak memory by 1 GiB or changed the files",
        "readers": {
            name: {
                "cases": sum(counts.values()),
                "refused": counts["refused"],
                "read": counts["read"],
                "sample_sentences": fuzz.MESSAGES.get(name, {}),
            }
            for name, counts in fuzz.COUNTS.items()
        },
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
