"""Preference data for Video-DPO: candidates, human labels, pairs."""
