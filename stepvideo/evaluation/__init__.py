"""stepvideo.evaluation"""
