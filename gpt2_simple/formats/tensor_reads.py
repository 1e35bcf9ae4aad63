"""Reading one tensor of a TF bundle: as NumPy, as a TensorFlow tensor, or cast to 16 bits slice by slice.

This module owns the reads `checkpoint.py`'s loaders and the adapter and resume readers make, and
their one error for a truncated or corrupt data file. What the names mean is `checkpoint.py`'s.
"""
import numpy as np
import tensorflow as tf

from ..errors import one_line

DATA_SUFFIX = ".data-00000-of-00001"


def read_tensor(reader, prefix, name):
    """One tensor as numpy, turning a truncated or corrupt data file into a ValueError."""
    try:
        return reader.get_tensor(name)
    except (tf.errors.OpError, ValueError, IndexError) as e:
        raise _corrupt(prefix, name, e) from None


def restore_tensor(prefix, name, shape, dtype=tf.float32):
    """One tensor of the bundle at `prefix` as a TensorFlow tensor of `shape`, read by itself (no NumPy copy:
    the loader of a float32 model puts it straight into its variable). Errors as `read_tensor`'s."""
    try:
        (value,) = tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=[name], shape_and_slices=[""], dtypes=[dtype])
    except (tf.errors.OpError, ValueError) as e:
        raise _corrupt(prefix, name, e) from None
    return tf.reshape(value, shape)


SLICE_BYTES = 64 * 2**20  # read at a time when a tensor is cast to 16 bits on loading


def restore_cast(prefix, name, shape, dtype, target):
    """One tensor of the bundle at `prefix` (stored `shape` and `dtype`) cast to `target`, as NumPy, read a slice
    of its longest axis at a time.

    TensorFlow's CPU allocator keeps the memory of the tensors it frees for reuse, so reading a whole
    float32 tensor to cast it would leave its size behind for good (the output matrix of 1558M: 322
    MB; after loading its whole base, 840 MB over its weights). Here no more than `SLICE_BYTES` (or one
    slice of the axis) is read at a time; the slices are cast, then joined in NumPy. Errors as `read_tensor`'s.
    """
    axis = int(np.argmax(shape)) if shape else 0
    total = shape[axis] if shape else 1
    index_bytes = tf.as_dtype(dtype).size * int(np.prod(shape)) // total  # one index of the axis: a row, a column
    step = max(1, SLICE_BYTES // max(index_bytes, 1))
    full = " ".join(str(d) for d in shape)
    pieces = []
    for start in range(0, total, step):
        spec = ":".join(f"{start},{min(step, total - start)}" if i == axis else "-" for i in range(len(shape)))
        try:
            (value,) = tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=[name], dtypes=[dtype],
                                            shape_and_slices=[f"{full} {spec}" if shape else ""])
        except (tf.errors.OpError, ValueError) as e:
            raise _corrupt(prefix, name, e) from None
        pieces.append(tf.cast(value, target).numpy())
    return np.concatenate(pieces, axis=axis) if shape else pieces[0]


def _corrupt(prefix, name, error):
    return ValueError(f"checkpoint {prefix}{DATA_SUFFIX} is truncated or corrupt (reading {name}: "
                      f"{one_line(error, first=True)}); download the model again or restore an earlier checkpoint")
