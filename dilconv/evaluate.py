"""`python -m dilconv eval`: mIoU / pixel accuracy of a trained model (see dilconv.train)."""
from dilconv.train import add_eval_arguments as add_arguments  # noqa: F401
from dilconv.train import eval_main as main  # noqa: F401
