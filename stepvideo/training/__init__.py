"""stepvideo.training"""
