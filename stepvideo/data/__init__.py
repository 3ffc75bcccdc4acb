"""stepvideo.data"""
