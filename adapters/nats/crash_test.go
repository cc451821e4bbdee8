package inboxnats_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pginbox/inbox"
	inboxnats "github.com/pginbox/inbox/adapters/nats"
	"github.com/pginbox/inbox/broker"
	"github.com/pginbox/inbox/internal/testenv"
)

// childEnv, when set to "URL schema stream durable", makes the test
// binary a crash-test child (see runChild).
const childEnv = "INBOXNATS_CRASH_CHILD"

// crashBatch is the batch size of the crash test's consumers.
const crashBatch = 100

// crashOptions are the options of the crash test's consumers.
func crashOptions(stream, durable string) inboxnats.Options {
	return inboxnats.Options{
		Stream: stream, Durable: durable, IDHeader: "Event-Id",
		BatchSize: crashBatch, FetchWait: 100 * time.Millisecond, AckWait: inboxnats.MinAckWait,
		Types: map[string]string{stream + ".order": "order"},
	}
}

// runChild is the crash-test child's life: a Consumer whose first
// committed Set never returns (a Set hook blocks), so the process is
// killed between the commit and the ack. It returns only on error.
func runChild(spec string) error {
	f := strings.Fields(spec)
	if len(f) != 4 {
		return fmt.Errorf("bad spec %q", spec)
	}
	cfg, err := pgxpool.ParseConfig(f[0])
	if err != nil {
		return err
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = f[1]
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return err
	}
	reg := inbox.NewRegistry()
	reg.On("order", inbox.HandlerFunc("h", func(context.Context, []byte) error { return nil }))
	ib, err := inbox.New(pool, reg, inbox.WithHooks(inbox.Hooks{OnSet: func(_ context.Context, e inbox.SetEvent) {
		if e.Err == nil {
			select {} // committed, never acked: wait for SIGKILL
		}
	}}))
	if err != nil {
		return err
	}
	nc, err := nats.Connect(natsURL)
	if err != nil {
		return err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	c, err := inboxnats.New(context.Background(), js, ib.Client(), crashOptions(f[2], f[3]))
	if err != nil {
		return err
	}
	return c.Run(context.Background())
}

// A consumer process killed between the commit of a batch and its ack
// loses nothing and stores nothing twice: the batch is redelivered and
// ignored as duplicates, the rest stored by the next consumer.
func TestKilledBetweenCommitAndAck(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const n = 500
	msgs, payloads := orders(e, n)
	e.publish(msgs...)

	cmd := exec.Command(os.Args[0]) // TestMain sees childEnv and runs runChild
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %s %s %s", childEnv, testenv.URL(), e.schema, e.stream, e.durable))
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	err := testenv.Poll(30*time.Second, func() (bool, error) {
		select {
		case err := <-exited:
			return false, fmt.Errorf("child exited early: %v\n%s", err, out.String())
		default:
		}
		return e.rows() > 0, nil
	})
	if err != nil {
		_ = cmd.Process.Kill()
		<-exited
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := <-exited; err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("child exit = %v, want killed", err)
	}
	committed := e.rows()
	if info := e.info(); committed == 0 || info.AckFloor.Stream != 0 || info.NumAckPending == 0 {
		t.Fatalf("after the kill: %d rows, ack floor %+v, %d unacked; want rows committed and none acked",
			committed, info.AckFloor, info.NumAckPending)
	}

	ib := testenv.Start(t, context.Background(), e.pool, e.reg, testenv.Fast(t)...)
	o := crashOptions(e.stream, e.durable)
	o.Logger = testenv.Logger(t)
	c := e.consumer(ib.Client(), o)
	testenv.Eventually(t, time.Minute, "every event handled after the restart", func() (bool, error) {
		return e.runs.distinct() == n, nil
	})
	e.settled(time.Minute)
	if bad, distinct := e.runs.check(payloads); bad != "" || distinct != n {
		t.Fatalf("%s; %d distinct events handled, want %d", bad, distinct, n)
	}
	if got := e.rows(); got != n {
		t.Fatalf("%d rows stored, want %d", got, n)
	}
	t.Logf("%d rows committed by the killed consumer; the next: %+v", committed, c.Stats())
}

// brokerID is the id of the message at stream sequence seq.
func brokerID(stream string, seq uint64) uuid.UUID {
	return broker.ID("jetstream", stream, strconv.FormatUint(seq, 10))
}
