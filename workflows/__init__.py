"""Temporal workflows: one per run, one gate per business."""
