"""Evaluation: pixel and object metrics, and the reports drawn from them."""
