"""Results out: sweep.csv, summary.json, the table, sweep.png, the --out folder, phase timings."""
