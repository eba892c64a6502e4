"""Tasks pair a tool family with ground truth and return metrics; the runner, not the tool, writes them."""
