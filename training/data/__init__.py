"""Dataset layer: MNIST / Fashion-MNIST IDX loading (mnist), binarized MNIST (binarized), MNIST with Captions
(captions), its Fashion-MNIST variant (fashion) and image/caption folders (folder).

Submodules are imported explicitly (`from training.data.captions import generate`) so that importing this package
stays cheap.
"""
