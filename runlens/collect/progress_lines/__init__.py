"""Zero-code steps: the training progress a script already prints, read as steps.

``ProgressParser`` (``parser``) takes lines of output and gives ``PrintedStep`` and ``PrintedEval`` records
(``records``); the recognisers live in ``formats`` (line formats), ``bars`` (tqdm, Lightning, Keras, Ultralytics),
``logdicts`` (Hugging Face and JSON dicts) and ``generic`` (plain loops and ``--progress-pattern``).
"""

from runlens.collect.progress_lines.generic import compile_pattern
from runlens.collect.progress_lines.parser import CANDIDATE_WORDS, ProgressParser
from runlens.collect.progress_lines.records import PrintedEval, PrintedStep, Record

__all__ = ["CANDIDATE_WORDS", "PrintedEval", "PrintedStep", "ProgressParser", "Record", "compile_pattern"]
