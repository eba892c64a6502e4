"""The human study: a question bank written by the synthesize track, a loopback web app that shows it to
people (`trojanbench survey serve`), and the scoring that puts their answers beside the automatic judge
(`trojanbench survey results`). See docs/survey.md."""

from .bank import N_OPTIONS, Bank, Question, load_bank, write_bank, write_bank_from_tensors

__all__ = ["N_OPTIONS", "Bank", "Question", "load_bank", "write_bank", "write_bank_from_tensors"]
