"""Metrics as plain functions of predictions and annotations, free of models and of the
framework (no config, no registry): the evaluators (:mod:`albef.evaluation`) score with
them, and the synthetic data generators use the same ones (a grounding task's candidate
boxes are jittered to an IoU; a VQA task's manifest holds its majority baseline), so the
data never depends on the evaluation or the modeling code."""
