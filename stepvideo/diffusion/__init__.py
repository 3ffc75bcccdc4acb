"""stepvideo.diffusion"""
