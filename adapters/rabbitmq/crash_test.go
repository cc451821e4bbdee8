package inboxrabbitmq_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/pginbox/inbox"
	inboxrabbitmq "github.com/pginbox/inbox/adapters/rabbitmq"
	"github.com/pginbox/inbox/internal/testenv"
)

// childEnv, when set, makes the test binary a crash-test child: it
// consumes the queue it names into the schema it names, and after its
// first committed Set prints "committed" and hangs before acknowledging,
// until it is killed. Its value is "databaseURL schema queue amqpURL".
const childEnv = "INBOX_RABBITMQ_CRASH_CHILD"

// committedLine is what the child prints once a Set committed.
const committedLine = "committed"

// crashChildMain runs the crash-test child when this process is one, and
// reports whether it was (it then exits, or hangs until killed).
func crashChildMain() bool {
	spec := os.Getenv(childEnv)
	if spec == "" {
		return false
	}
	if err := runCrashChild(spec); err != nil {
		fmt.Fprintf(os.Stderr, "crash child: %v\n", err)
		os.Exit(2)
	}
	return true
}

func runCrashChild(spec string) error {
	parts := strings.Fields(spec)
	if len(parts) != 4 {
		return fmt.Errorf("bad %s: %q", childEnv, spec)
	}
	cfg, err := pgxpool.ParseConfig(parts[0])
	if err != nil {
		return err
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = parts[1]
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return err
	}
	reg, _ := registry()
	hang := inbox.Hooks{OnSet: func(_ context.Context, e inbox.SetEvent) {
		if e.Err == nil {
			fmt.Println(committedLine)
			select {} // committed, not acknowledged: wait for SIGKILL
		}
	}}
	ib, err := inbox.New(pool, reg, inbox.WithHooks(hang))
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	c, err := inboxrabbitmq.New(inboxrabbitmq.DialURL(parts[3]), ib.Client(),
		inboxrabbitmq.Options{Queue: parts[2], BatchSize: 50, Logger: log})
	if err != nil {
		return err
	}
	return c.Run(context.Background())
}

// A consumer process killed between Set's commit and the acknowledgement
// loses nothing and stores nothing twice: RabbitMQ redelivers the batch to
// the next consumer, whose Set ignores it.
func TestKilledBetweenCommitAndAck(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	schema := testenv.Schema(t)
	pool := testenv.SchemaPool(t, schema, 10)
	if err := inbox.Migrate(context.Background(), pool); err != nil {
		t.Fatal(err)
	}
	const n = 500
	msgs := make([]amqp.Publishing, n)
	for i := range msgs {
		msgs[i] = message("order_created", uuid.NewString(), `{"i":`+itoa(i)+`}`)
	}
	r.publish(msgs...)

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+strings.Join([]string{testenv.URL(), schema, r.queue, amqpURL}, " "))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	committed, read := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(read)
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			if s.Text() == committedLine {
				close(committed)
				break
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case <-committed:
	case <-time.After(time.Minute):
		_ = cmd.Process.Kill()
		<-read
		_ = cmd.Wait()
		t.Fatalf("the child committed no Set within a minute:\n%s", stderr.String())
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-read // the pipe is read to its end before Wait closes it
	if err := cmd.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("child exit = %v, want killed\n%s", err, stderr.String())
	}
	stored := rows(t, pool)
	if stored == 0 {
		t.Fatal("the child's Set stored nothing")
	}

	reg, runs := registry()
	ib := testenv.Start(t, context.Background(), pool, reg, testenv.Fast(t)...)
	c := newConsumer(t, r, inboxrabbitmq.DialURL(amqpURL), ib.Client(), inboxrabbitmq.Options{BatchSize: 50})
	stop := run(t, c)
	testenv.Eventually(t, time.Minute, "every event handled", func() (bool, error) {
		events, _ := runs.counts()
		return events == n, nil
	})
	// Everything was delivered again: the batch the child stored but
	// never acknowledged is acknowledged now, as duplicates.
	waitStats(t, c, time.Minute, "every message acknowledged", func(s inboxrabbitmq.Stats) bool { return s.Acked == n })
	stop()
	if events, total := runs.counts(); events != n || total != n {
		t.Fatalf("handled %d events in %d runs, want %d in %d", events, total, n, n)
	}
	if got := rows(t, pool); got != n {
		t.Fatalf("%d rows stored, want %d", got, n)
	}
	if got := r.ready(r.queue); got != 0 {
		t.Fatalf("%d messages left in the queue, want 0", got)
	}
	t.Logf("the child stored %d before it was killed; stats after restart: %+v", stored, c.Stats())
}
