"""Stitching layers and the stitched network."""
from .layers import ConvStitch, StitchingLayer, TokenStitch, build_stitching_layer
from .network import StitchedNetwork, freeze

__all__ = ["ConvStitch", "StitchedNetwork", "StitchingLayer", "TokenStitch", "build_stitching_layer", "freeze"]
