//! ZooKeeper backend for queuelock (work in progress).
