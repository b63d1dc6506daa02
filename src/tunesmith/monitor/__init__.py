"""The monitor stage: online scores of served answers, feedback, drift against training data."""
