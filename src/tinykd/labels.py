"""The one target label that counts in no loss and no metric, in a leaf module so that every layer shares it."""

IGNORE_INDEX = -100  # PyTorch's and Hugging Face's convention: padding, unmasked tokens, the last position
