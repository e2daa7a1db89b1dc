"""Foreground masks from a segmentation network: ``isnet segment train|predict|eval``.

A MONAI ``UNet`` (2-D) is trained with Lightning on images and masks in the dataset layout,
predicts PNG masks for new images (written in the dataset layout, so ``isnet train`` uses them
directly), reports Dice and IoU, and supplies the predicted masks of the segment-then-classify
baseline (``isnet train --objective seg-classify --segmenter RUN``).

* :mod:`.config`: :class:`SegmentConfig`, every option of ``isnet segment train``;
* :mod:`.predict`: build and load the network, masks for tensors and for image files, Dice / IoU
  (PyTorch and MONAI only, no Lightning);
* :mod:`.train`: the Lightning module and ``fit_segmenter``.

This package's ``__init__`` imports nothing, so that loading a segmenter never pulls in Lightning.
"""
