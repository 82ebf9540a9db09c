"""Seedream 3.0 data techniques: defect-aware masks, dual-axis sampling weights, curation filters."""
