"""Stream processing (faust-streaming): assemble, score, gate, format, window."""
