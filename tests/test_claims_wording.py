"""The claims table states each claim in the paper's own words, with where they come from."""

from __future__ import annotations

import lpm.figures as F
from lpm.figures.claims import PAPER, PAPER_SOURCE, range_row

from test_figures import _fake_kodak_context

#: The abstract of arXiv:2311.13846v1 (arXiv HTML page), the phrases the table quotes.
ABSTRACT_PHRASES = (
    "80% savings in parameter storage", "90% savings in datasets", "arrives at the same performance",
    "methods based on multiple models, which are optimized separately for different target rates",
    "outperforms all current variable bitrate image methods in terms of rate-distortion performance",
    "approaches the state-of-the-art fixed bitrate image compression methods trained from scratch",
    "covers a wide range of compression rates", "pre-trained transformer-based image compression model",
)


def _quotes(text: str) -> list[str]:
    return text.split('"')[1::2]


def test_paper_words_are_quotes_of_the_abstract_with_a_source():
    for key, text in PAPER.items():
        assert PAPER_SOURCE in text and "arXiv:2311.13846" in text, key
        quotes = _quotes(text)
        assert quotes, key
        for q in quotes:  # every quoted phrase is (part of) the abstract's wording
            assert any(q in phrase or phrase in q for phrase in ABSTRACT_PHRASES), (key, q)
    # what the abstract does not say is not put in its mouth
    for key in ("variable", "fixed"):
        assert "not stated there" in PAPER[key] and "our choice" in PAPER[key]
    assert range_row(None, None, "b")["paper"] == PAPER["range"]


def test_every_claims_row_carries_the_papers_words(tmp_path):
    ctx = _fake_kodak_context(tmp_path, [0.2, 0.22, 0.24, 0.26, 0.28, 0.3], [23.0, 23.1, 23.2, 23.3, 23.4, 23.5])
    t = F.claims_table(ctx)
    assert set(t["paper"]) <= set(PAPER.values())
    assert t["paper"].str.contains(PAPER_SOURCE, regex=False).all()
    storage = t.set_index("claim").loc["80 % less parameter storage (paper-size architecture, N=128/M=192, 6 rates)"]
    assert "by design" in storage["measurement"]
