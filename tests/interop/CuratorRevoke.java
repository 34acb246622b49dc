import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.locks.InterProcessMutex;
import org.apache.curator.framework.recipes.locks.Revoker;
import org.apache.curator.retry.RetryOneTime;

/**
 * Curator's side of the revocation interop test (tests/zk_interop.rs): Apache Curator's
 * own InterProcessMutex.makeRevocable and Revoker.attemptRevoke against queuelock.
 *
 * <pre>
 * java -cp ... CuratorRevoke hold   CONNECT PATH   take the lock made revocable, print "held NODE",
 *                                                  wait for a revocation (print "revoked"),
 *                                                  release, print "released"; exit 3 after 30 s
 * java -cp ... CuratorRevoke revoke CONNECT PATH   Revoker.attemptRevoke on the lock's first
 *                                                  participant node (its holder); print "asked NODE"
 * </pre>
 *
 * One line per step on stdout, flushed, so the test can follow along.
 */
public final class CuratorRevoke {
    static void say(String line) {
        System.out.println(line);
        System.out.flush();
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 3) {
            System.err.println("usage: CuratorRevoke hold|revoke CONNECT PATH");
            System.exit(2);
        }
        CuratorFramework client = CuratorFrameworkFactory.newClient(args[1], 10_000, 10_000, new RetryOneTime(100));
        client.start();
        if (!client.blockUntilConnected(10, TimeUnit.SECONDS)) {
            System.err.println("no connection to " + args[1]);
            System.exit(1);
        }
        InterProcessMutex mutex = new InterProcessMutex(client, args[2]);
        int status = 0;
        switch (args[0]) {
            case "hold": {
                CountDownLatch revoked = new CountDownLatch(1);
                // Curator calls the listener on its event thread; InterProcessMutex must be
                // released by the thread that acquired it, so the listener only signals.
                mutex.makeRevocable(forLock -> revoked.countDown());
                mutex.acquire();
                List<String> nodes = new ArrayList<>(mutex.getParticipantNodes());
                say("held " + (nodes.isEmpty() ? "?" : nodes.get(0)));
                if (revoked.await(30, TimeUnit.SECONDS)) {
                    say("revoked");
                } else {
                    say("not revoked within 30 s");
                    status = 3;
                }
                mutex.release();
                say("released");
                break;
            }
            case "revoke": {
                Collection<String> nodes = mutex.getParticipantNodes();
                if (nodes.isEmpty()) {
                    say("nobody holds " + args[2]);
                    status = 3;
                    break;
                }
                String holder = nodes.iterator().next();
                Revoker.attemptRevoke(client, holder);
                say("asked " + holder);
                break;
            }
            default:
                System.err.println("unknown mode " + args[0]);
                status = 2;
        }
        client.close();
        System.exit(status);
    }
}
