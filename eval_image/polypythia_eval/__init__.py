"""polypythia_eval: lm-eval on checkpoints, weight statistics, training maps and the report."""
