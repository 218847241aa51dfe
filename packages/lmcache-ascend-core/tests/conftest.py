import os
import sys

# kvref.py (the torch-indexing oracle) sits next to the tests; the code under test comes from
# the installed wheel only.
sys.path.insert(0, os.path.dirname(__file__))
