"""What measures a model (DESIGN.md's third layer, above models/ and utils/): hellaswag.py (both conventions,
the one locator), loss.py (val loss), sampling.py (text samples), report.py (the report schema, torch-free so
compare.py stays light) and evaluator.py (the setup test_gpt.py, wanda.py and sweep.py share)."""
