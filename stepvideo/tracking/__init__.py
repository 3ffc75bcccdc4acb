"""stepvideo.tracking"""
