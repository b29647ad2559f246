"""Many models at once (`torch-badnet batch`, `tb.prune_batch`): manifest, shared data, workers, combined report."""
