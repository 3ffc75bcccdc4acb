"""stepvideo.compat"""
