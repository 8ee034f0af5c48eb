/*
 * Waits until the broker answers, then creates the stack's topics if they are missing (idempotent).
 *
 * Run as a single-file source program (Java 11+, JEP 330) against the broker's own jars, so topic setup
 * needs no Python and no extra download, and costs one JVM start instead of one per topic:
 *
 *   java -cp '.tools/kafka-<v>/libs/*' EnsureTopics.java <bootstrap> <deadline-seconds> name:partitions ...
 *
 * Exit status 0 when every topic exists (created now or before), 1 otherwise.
 */

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.common.errors.TopicExistsException;

public class EnsureTopics {
    public static void main(String[] args) throws Exception {
        if (args.length < 3) {
            System.err.println("usage: EnsureTopics <bootstrap> <deadline-seconds> name:partitions ...");
            System.exit(2);
        }
        String bootstrap = args[0];
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Long.parseLong(args[1]));
        List<NewTopic> wanted = new ArrayList<>();
        for (int i = 2; i < args.length; i++) {
            String[] parts = args[i].split(":");
            wanted.add(new NewTopic(parts[0], Integer.parseInt(parts[1]), (short) 1));
        }

        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "5000");
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "10000");
        try (Admin admin = Admin.create(props)) {
            Exception last = null;
            while (System.nanoTime() < deadline) {
                try {
                    ensure(admin, wanted);
                    return;
                } catch (ExecutionException e) {
                    // The broker is up but not yet serving metadata (or a create raced another one): retry.
                    last = e;
                    Thread.sleep(500);
                }
            }
            System.err.println("EnsureTopics: gave up: " + last);
            System.exit(1);
        }
    }

    private static void ensure(Admin admin, List<NewTopic> wanted) throws Exception {
        Set<String> existing = admin.listTopics().names().get();
        List<NewTopic> missing = new ArrayList<>();
        for (NewTopic t : wanted) {
            if (!existing.contains(t.name())) {
                missing.add(t);
            }
        }
        for (Map.Entry<String, org.apache.kafka.common.KafkaFuture<Void>> e
                : admin.createTopics(missing).values().entrySet()) {
            try {
                e.getValue().get();
                System.out.println("created topic " + e.getKey());
            } catch (ExecutionException ex) {
                if (!(ex.getCause() instanceof TopicExistsException)) {
                    throw ex;
                }
            }
        }
        List<String> names = new ArrayList<>();
        for (NewTopic t : wanted) {
            names.add(t.name());
        }
        Map<String, TopicDescription> described = admin.describeTopics(names).allTopicNames().get();
        for (NewTopic t : wanted) {
            int have = described.get(t.name()).partitions().size();
            String note = have == t.numPartitions() ? "" : " (wanted " + t.numPartitions() + "; an existing topic keeps its count)";
            System.out.println("topic " + t.name() + " partitions=" + have + note);
        }
    }
}
