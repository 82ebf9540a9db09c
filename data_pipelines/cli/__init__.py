"""Command-line tools (prepare, report, measure; Ray runner): the only part of data_pipelines that imports seedjax."""
