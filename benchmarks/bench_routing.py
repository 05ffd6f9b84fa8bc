"""The local `auto` classifier on the labelled routing set, against a baseline in the same run.

Prints accuracy (overall, English, Russian), the confusion matrix, the split of decisions,
``code_or_analysis_sent_to_fast`` (must be 0), the misses, and the p50 time to classify one
prompt next to the p50 of ``str.lower()`` + one precompiled regex search on the same prompts
(the least a keyword router could do), with their ratio. Targets: accuracy ≥ 0.90, p50 < 1 ms.

    python benchmarks/bench_routing.py [--set tests/routing_set.yaml] [--repeat 200]
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections import Counter
from pathlib import Path

import yaml

from mirai_magics.client.routing import ORDER, LocalClassifier
from mirai_magics.config import load_config

SET = Path(__file__).resolve().parents[1] / "tests/routing_set.yaml"
CYRILLIC = re.compile(r"[а-яё]", re.IGNORECASE)
BASELINE = re.compile(r"\b(?:spam|refactor|translate|classify)\b")


def per_prompt_p50_us(fn, texts: list[str], repeat: int) -> float:
    """The median over prompts of each prompt's median time (µs) over ``repeat`` runs."""
    medians = []
    for text in texts:
        runs = []
        for _ in range(repeat):
            started = time.perf_counter()
            fn(text)
            runs.append(time.perf_counter() - started)
        medians.append(statistics.median(runs))
    return statistics.median(medians) * 1e6


def baseline(text: str) -> object:
    return BASELINE.search(text.lower())


def report(cases: list[dict], predicted: list[str]) -> None:
    labels = [c["label"] for c in cases]
    hits = [p == c["label"] for p, c in zip(predicted, cases, strict=True)]
    print(f"prompts={len(cases)} labels={dict(Counter(labels))}")
    print(f"accuracy={sum(hits) / len(cases):.3f} ({sum(hits)}/{len(cases)})")
    for lang, is_ru in (("en", False), ("ru", True)):
        picked = [
            h for h, c in zip(hits, cases, strict=True) if bool(CYRILLIC.search(c["text"])) == is_ru
        ]
        print(f"accuracy_{lang}={sum(picked) / len(picked):.3f} ({sum(picked)}/{len(picked)})")
    print("confusion (rows: label, columns: chosen)")
    print("        " + "".join(f"{p:>7}" for p in ORDER))
    pairs = Counter(zip(labels, predicted, strict=True))
    for label in ORDER:
        print(f"{label:>7} " + "".join(f"{pairs[label, p]:>7}" for p in ORDER))
    split = Counter(predicted)
    print("split=" + " · ".join(f"{p} {100 * split[p] / len(cases):.0f}%" for p in ORDER))
    asks = [c for c, p in zip(cases, predicted, strict=True) if c.get("asks") and p == "fast"]
    print(f"code_or_analysis_sent_to_fast={len(asks)}")
    for case, p in zip(cases, predicted, strict=True):
        if p != case["label"]:
            print(f"  miss: {case['label']} → {p}: {' '.join(case['text'].split())[:80]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", type=Path, default=SET)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    cases = yaml.safe_load(args.set.read_text(encoding="utf-8"))
    classifier = LocalClassifier.from_config(load_config())
    report(cases, [classifier.classify(c["text"]).profile for c in cases])
    texts = [c["text"] for c in cases]
    ours = per_prompt_p50_us(classifier.classify, texts, args.repeat)
    base = per_prompt_p50_us(baseline, texts, args.repeat)
    print(f"classify_p50_us={ours:.1f} (target < 1000)")
    print(f"baseline_p50_us={base:.2f} (str.lower() + one regex search)")
    print(f"ratio={ours / base:.1f}x the baseline")


if __name__ == "__main__":
    main()
