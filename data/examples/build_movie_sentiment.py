"""Rebuild movie_sentiment.jsonl from the vaderSentiment 3.3.2 source distribution.

    pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d /tmp/vader
    python data/examples/build_movie_sentiment.py /tmp/vader/vaderSentiment-3.3.2.tar.gz

Sentences whose mean human score lies within [-0.5, 0.5] are dropped as neutral; the rest are
labelled by the sign of the score. Order follows the source file.
"""

import io
import json
import sys
import tarfile
from pathlib import Path

INNER_ARCHIVE = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"


def main(sdist: str) -> None:
    with tarfile.open(sdist) as outer:
        inner_bytes = outer.extractfile(INNER_ARCHIVE).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        raw = inner.extractfile(MEMBER).read().decode("latin-1")
    out = Path(__file__).with_name("movie_sentiment.jsonl")
    kept = 0
    with out.open("w", encoding="utf-8") as f:
        for line in raw.splitlines():
            if not line.strip():
                continue
            _id, score, text = line.split("\t", 2)
            score = float(score)
            if abs(score) <= 0.5:
                continue
            label = "positive" if score > 0 else "negative"
            f.write(json.dumps({"text": text.strip(), "label": label}, ensure_ascii=False) + "\n")
            kept += 1
    print(f"wrote {kept} rows to {out}")


if __name__ == "__main__":
    main(sys.argv[1])
