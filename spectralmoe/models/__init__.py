"""Models: frozen backbones, the depth encoder, adapters, heads and the segmentor that joins them."""
