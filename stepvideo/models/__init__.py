"""stepvideo.models"""
