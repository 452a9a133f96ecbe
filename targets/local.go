package targets

// Local is a target that keeps its replicas in a directory of this machine
// (a local disk or a mount). The process server watches the free space of
// that directory's file system: it throttles agents before the disk is
// full, and after a full disk it reopens a replica once there is room.
type Local interface {
	// LocalDir is the directory that holds the replicas. It need not
	// exist yet.
	LocalDir() string
}
