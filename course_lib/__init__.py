"""course_lib: the tested companion library of the sequence-to-sequence course.

Import what you need from its modules, e.g. ``from course_lib.bleu import corpus_bleu``.
Importing the package does nothing else: no downloads, no plotting backends, no seeds.
"""

__version__ = "0.1.0"
