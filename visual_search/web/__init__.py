"""A small trial web page: upload a photo, see the boxes, tap one, see the result grid."""
