"""lidar"""
