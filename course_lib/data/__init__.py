"""Data for translation: text preprocessing, vocabularies, batches, and the course's corpora."""
