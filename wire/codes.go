package wire

import "strconv"

// Op is the code of a request frame: the operation.
type Op uint8

// Operations, as in docs/protocol.md.
const (
	OpGet           Op = 1
	OpSet           Op = 2
	OpDelete        Op = 3
	OpCompareAndSet Op = 4
	OpMGet          Op = 5
	OpMSet          Op = 6
	OpPing          Op = 7
)

var opNames = [...]string{
	OpGet:           "Get",
	OpSet:           "Set",
	OpDelete:        "Delete",
	OpCompareAndSet: "CompareAndSet",
	OpMGet:          "MGet",
	OpMSet:          "MSet",
	OpPing:          "Ping",
}

// Known reports whether o is an operation this version of the protocol
// defines. A server answers any other code with StatusUnknownOp.
func (o Op) Known() bool { return o >= OpGet && o <= OpPing }

func (o Op) String() string {
	if o.Known() {
		return opNames[o]
	}
	return "Op(" + strconv.Itoa(int(o)) + ")"
}

// Status is the code of a response frame. StatusOK means the body is the
// operation's response body; any other status means it is an ErrorBody.
type Status uint8

// Statuses, as in docs/protocol.md.
const (
	StatusOK             Status = 0
	StatusNotFound       Status = 1
	StatusNotLeader      Status = 2
	StatusBadRequest     Status = 3
	StatusTooLarge       Status = 4
	StatusUnavailable    Status = 5
	StatusUnknownOp      Status = 6
	StatusMalformedFrame Status = 7
	StatusInternal       Status = 8
	StatusStopping       Status = 9
)

var statusNames = [...]string{
	StatusOK:             "OK",
	StatusNotFound:       "NotFound",
	StatusNotLeader:      "NotLeader",
	StatusBadRequest:     "BadRequest",
	StatusTooLarge:       "TooLarge",
	StatusUnavailable:    "Unavailable",
	StatusUnknownOp:      "UnknownOp",
	StatusMalformedFrame: "MalformedFrame",
	StatusInternal:       "Internal",
	StatusStopping:       "Stopping",
}

func (s Status) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return "Status(" + strconv.Itoa(int(s)) + ")"
}
