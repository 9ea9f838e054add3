"""Elsayed et al.'s PyTorch `sparse_init`, the original of the reference's.

The 2-D (linear layer) branch of `sparse_init` in Elsayed et al.'s
`sparse_init.py` (the file the reference's docstring cites as its own
reference), as written there; renamed `torch_sparse_init` here so that it is not
confused with the reference's JAX `sparse_init`. The benchmark times it as the
anchor the reference was ported from. torch is imported when the function is
called, so this module imports without torch. See README.md for provenance.

Its zero count rounds up (`ceil`) where the reference rounds to nearest: at most
one zero more per row.
"""

import math


def torch_sparse_init(tensor, sparsity, type="uniform"):  # pylint: disable=redefined-builtin
  """Sets `tensor` (fan_out, fan_in) in place to LeCun values, then zeros.

  Args:
    tensor: a 2-D torch tensor, overwritten.
    sparsity: fraction of each output unit's inputs set to zero.
    type: "uniform" or "normal".

  Returns:
    `tensor`.
  """
  import torch  # pylint: disable=g-import-not-at-top

  fan_out, fan_in = tensor.shape
  num_zeros = int(math.ceil(sparsity * fan_in))
  with torch.no_grad():
    if type == "uniform":
      tensor.uniform_(-math.sqrt(1.0 / fan_in), math.sqrt(1.0 / fan_in))
    elif type == "normal":
      tensor.normal_(0, math.sqrt(1.0 / fan_in))
    else:
      raise ValueError("Unknown initialization type")
    for col_idx in range(fan_out):
      row_indices = torch.randperm(fan_in)
      zero_indices = row_indices[:num_zeros]
      tensor[col_idx, zero_indices] = 0
  return tensor
