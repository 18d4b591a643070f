"""The LiDAR core on real LAS/LAZ files and small clouds written with laspy, against independent references."""
