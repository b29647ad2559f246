"""The defense: sets -> ranking -> sweep -> metrics -> B'_X, stopping rules, fine-tuning, evaluation; the library calls."""
